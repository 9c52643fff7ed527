//! Starting an action's process at a cost that does not grow with the server's memory.
//!
//! `fork()` copies the page tables of the whole server, so with `std::process` (which forks
//! whenever a pre-exec step such as a uid drop is needed) every megabyte rexd holds made
//! every action slower: 0.28 ms at 12 MiB of RSS, 4.5 ms at 193 MiB. Here the child is made
//! with `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does: it shares the server's memory
//! instead of copying it, and the spawning thread waits until it has exec'd.
//!
//! Because the child shares the parent's memory, it may only make raw system calls on data
//! prepared before the clone: no allocation, no locks, no libc wrappers that touch
//! process-wide state (glibc's `setuid` would signal the parent's threads). Everything is
//! built into a [`Prepared`] first.
//!
//! Children are made on one long-lived thread: bubblewrap's `--die-with-parent` ties the
//! action to the *thread* that made it, so that thread must live as long as the server.
//! Each child comes back with a pidfd, which the async runtime watches for its exit.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock, mpsc};

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

mod child;

/// Signals are numbered below this on Linux.
const NSIG: libc::c_int = 65;

/// Stack of the cloned child until it execs: it runs a handful of raw system calls.
const CHILD_STACK: usize = 256 * 1024;

/// The search path when the action's environment sets none (what glibc's `execvp` uses).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// How the child enters its exec root and drops privileges (rexd running as root).
pub struct Credentials {
    /// Bind source and target, made in a private mount namespace before the uid drop.
    pub bind: Option<(CString, CString)>,
    pub uid: u32,
    pub gid: u32,
}

/// Everything the child needs, prepared before the clone.
pub struct Prepared {
    /// Paths to try in order, as `execvp` would: one for a program with a `/`, else one per
    /// search path entry.
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    /// The child's descriptors 0, 1, 2 and then 3, 4, ... in this order.
    fds: Vec<OwnedFd>,
    credentials: Option<Credentials>,
    /// `(resource, limit)` pairs, applied after the uid drop.
    rlimits: Vec<(libc::c_int, u64)>,
}

/// The process of one action: a command, its environment and its limits.
pub struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    /// Descriptors the child gets as 3, 4, ... after stdio (a sandbox's control socket).
    pub extra_fds: Vec<OwnedFd>,
    pub credentials: Option<Credentials>,
    pub max_processes: Option<u64>,
    pub max_memory: Option<u64>,
    pub max_file_size: u64,
}

fn cstring(what: &str, bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

impl Spec {
    /// Builds the exec arguments. A program without a `/` is looked up in the action's own
    /// PATH, relative entries against its working directory, as `execvp` would in the child.
    pub fn prepare(self) -> io::Result<Prepared> {
        let candidates = exec_candidates(self.program.as_bytes(), &self.env)?;
        let argv = std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<io::Result<_>>()?;
        let envp = self
            .env
            .iter()
            .map(|(name, value)| {
                cstring(
                    "an environment variable",
                    format!("{name}={value}").as_bytes(),
                )
            })
            .collect::<io::Result<_>>()?;
        let stdin = std::fs::File::open("/dev/null")?;
        let mut rlimits = vec![(libc::RLIMIT_FSIZE as libc::c_int, self.max_file_size)];
        if let Some(n) = self.max_processes {
            rlimits.push((libc::RLIMIT_NPROC as libc::c_int, n));
        }
        if let Some(m) = self.max_memory {
            rlimits.push((libc::RLIMIT_AS as libc::c_int, m));
        }
        Ok(Prepared {
            candidates,
            argv,
            envp,
            cwd: cstring("the working directory", self.cwd.as_os_str().as_bytes())?,
            fds: [stdin.into(), self.stdout.into(), self.stderr.into()]
                .into_iter()
                .chain(
                    self.extra_fds
                        .into_iter()
                        .map(above_targets)
                        .collect::<io::Result<Vec<_>>>()?,
                )
                .collect(),
            credentials: self.credentials,
            rlimits,
        })
    }
}

/// The paths to try for `program`, in order, as `execvp` would: the program itself if it
/// has a `/`, else one per entry of the action's own PATH (relative entries against the
/// working directory).
pub fn exec_candidates(program: &[u8], env: &[(String, String)]) -> io::Result<Vec<CString>> {
    if program.contains(&b'/') {
        return Ok(vec![cstring("the program path", program)?]);
    }
    let path = env
        .iter()
        .find(|(name, _)| *name == "PATH")
        .map_or(DEFAULT_PATH, |(_, value)| value.as_bytes());
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(program);
            cstring("a PATH entry", &full)
        })
        .collect()
}

/// The lowest descriptor number an extra descriptor is moved to before the clone, so that
/// placing one at its target (3, 4, ...) never overwrites another still to be placed.
const FIRST_FREE_FD: RawFd = 64;

fn above_targets(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own makes a new one we then own.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// A running action process; killed (and reaped) if dropped before it was waited for.
pub struct Child {
    pid: libc::pid_t,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
}

impl Child {
    /// The process id, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the process to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            let mut ready = self.pidfd.readable().await?;
            ready.clear_ready();
        }
    }

    /// Whether the process has exited (it is reaped if so).
    pub fn has_exited(&mut self) -> bool {
        self.reaped || !matches!(self.try_reap(), Ok(None))
    }

    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid out pointer.
        let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match rc {
            0 => Ok(None),
            rc if rc == self.pid => {
                self.reaped = true;
                Ok(Some(ExitStatus::from_raw(status)))
            }
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pid = self.pid;
        // SAFETY: signalling and reaping our own unreaped child; its pid cannot be reused
        // before the reap.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::spawn(move || unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        });
    }
}

/// A spawn request for the spawner thread, and where its answer goes.
type Request = (
    Prepared,
    oneshot::Sender<io::Result<(libc::pid_t, OwnedFd)>>,
);

/// Starts the action's process.
pub async fn spawn(prepared: Prepared) -> io::Result<Child> {
    let (reply, answer) = oneshot::channel();
    spawner()
        .lock()
        .unwrap()
        .send((prepared, reply))
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    let (pid, pidfd) = answer
        .await
        .map_err(|_| io::Error::other("the process spawner thread is gone"))??;
    // SAFETY: the OwnedFd is moved in and stays open, unchanged, for the AsyncFd's life.
    let registered =
        unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
    let pidfd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e.into());
        }
    };
    Ok(Child {
        pid,
        pidfd,
        reaped: false,
    })
}

/// The sender to the one spawner thread, started on first use.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rexd-spawner".into())
            .spawn(move || {
                // Every signal stays blocked on this thread, so none can reach a child
                // between the clone and its exec (the child unblocks them just before).
                // SAFETY: plain signal-mask calls on this thread.
                unsafe {
                    let mut all: libc::sigset_t = std::mem::zeroed();
                    libc::sigfillset(&mut all);
                    libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
                }
                let mut stack = vec![0u8; CHILD_STACK];
                for (prepared, reply) in rx {
                    let _ = reply.send(child::clone_child(&prepared, &mut stack));
                }
            })
            .expect("starting the process spawner thread");
        Mutex::new(tx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Spec {
        Spec {
            program: program.into(),
            args: args.iter().map(|a| a.into()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: dir.to_path_buf(),
            stdout: std::fs::File::create(dir.join("out")).unwrap(),
            stderr: std::fs::File::create(dir.join("err")).unwrap(),
            extra_fds: Vec::new(),
            credentials: None,
            max_processes: None,
            max_memory: None,
            max_file_size: 1 << 30,
        }
    }

    #[tokio::test]
    async fn runs_with_its_env_dir_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let args = ["-c", "echo $GREETING; pwd; exit 3"];
        let env = [("GREETING", "hello"), ("PATH", "/usr/bin:/bin")];
        let mut child = spawn(spec("sh", &args, &env, dir.path()).prepare().unwrap())
            .await
            .unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(3));
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("hello\n{}\n", real.display()));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_not_a_child() {
        let dir = tempfile::tempdir().unwrap();
        let err = spawn(
            spec("no-such-program-here", &[], &[], dir.path())
                .prepare()
                .unwrap(),
        )
        .await
        .err()
        .expect("spawning a missing program fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[tokio::test]
    async fn limits_apply_to_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("/bin/sh", &["-c", "ulimit -f"], &[], dir.path());
        s.max_file_size = 1024 * 512;
        let mut child = spawn(s.prepare().unwrap()).await.unwrap();
        assert!(child.wait().await.unwrap().success());
        let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert_eq!(out.trim(), "1024", "ulimit -f counts 512-byte blocks");
    }
}
