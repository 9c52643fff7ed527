//! `rexd sandbox-init`: pid 1 of a worker's long-lived sandbox. It runs one action at a
//! time on request, and between two actions puts the sandbox back as it found it: every
//! process the action left is killed and reaped (as pid 1 it inherits them all), and the
//! writable places the sandbox has (`/tmp` outside the exec root, `/dev`, `/dev/shm`,
//! `/dev/mqueue`, System V IPC) are emptied back to what they held at start. The exec root
//! itself is the worker's to empty, from outside.
//!
//! A small single-threaded process, so `fork` here is cheap and safe; the server itself
//! never forks (see [`crate::execution::spawn`]).

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, wait};
use nix::unistd::{ForkResult, Pid, fork};

use super::wire::{self, Reply, RunRequest};
use crate::execution::spawn::exec_candidates;

/// The control socket and the init program's own descriptor, as the worker placed them.
const CONTROL_FD: i32 = 3;
const PROGRAM_FD: i32 = 4;

/// The writable directories of the default view, emptied back after every action.
const WRITABLE: &[&str] = &["/tmp", "/tmp/rexd", "/dev", "/dev/shm", "/dev/mqueue"];

/// Runs the request loop until the worker closes the socket. Returns the exit code.
pub fn main() -> i32 {
    // SAFETY: descriptor 4 is ours to close; 3 becomes the one owner of the socket.
    let mut control = unsafe {
        libc::close(PROGRAM_FD);
        UnixStream::from_raw_fd(CONTROL_FD)
    };
    // Not dumpable: an action runs under this process's uid, and must not be able to
    // ptrace it or write its memory through /proc to reach the next action's descriptors
    // and processes. (The next action's exec resets the flag for the action itself.)
    // SAFETY: prctl on this process's own flag.
    if set_cloexec(&control).is_err() || unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) } != 0 {
        return 1;
    }
    let devnull = match std::fs::File::open("/dev/null") {
        Ok(f) => f,
        Err(_) => return 1,
    };
    let baseline = Baseline::take();
    let ready = Reply {
        ready: true,
        ..Default::default()
    };
    if wire::send_reply(&mut control, &ready).is_err() {
        return 1;
    }
    loop {
        let (request, [stdout, stderr]) = match wire::recv_request(&mut control) {
            Ok(Some(r)) => r,
            Ok(None) => return 0,
            Err(_) => return 1,
        };
        let mut reply = run(&request, [&devnull, &stdout, &stderr]);
        drop((stdout, stderr));
        drop(request);
        reply.tainted = !baseline.restore();
        if wire::send_reply(&mut control, &reply).is_err() {
            return 1;
        }
    }
}

fn set_cloexec(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs one action to its end, then kills and reaps whatever it left.
fn run(request: &RunRequest, stdio: [&dyn AsRawFd; 3]) -> Reply {
    let failed = |why: String| Reply {
        start_error: why,
        ..Default::default()
    };
    let Some(program) = request.argv.first() else {
        return failed("no command line".into());
    };
    let env: Vec<(String, String)> = request
        .env
        .iter()
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let c = |b: &Vec<u8>| CString::new(b.clone());
    let (Ok(candidates), Ok(argv), Ok(envp), Ok(cwd)) = (
        exec_candidates(program, &env),
        request.argv.iter().map(c).collect::<Result<Vec<_>, _>>(),
        request.env.iter().map(c).collect::<Result<Vec<_>, _>>(),
        c(&request.cwd),
    ) else {
        return failed("the command line, environment or directory holds a NUL byte".into());
    };
    // The child reports a failure before exec on this pipe; a successful exec closes it.
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return failed(format!("making a pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    let (mut report_read, report_write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let raw = stdio.map(|fd| fd.as_raw_fd());
    // SAFETY: this process is single-threaded, so the child may run ordinary code.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => exec_child(&candidates, &argv, &envp, &cwd, raw, report_write),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return failed(format!("fork: {e}")),
    };
    drop(report_write);
    let mut report = String::new();
    let _ = report_read.read_to_string(&mut report);
    let status = reap_until(child);
    kill_the_rest();
    if !report.is_empty() {
        return failed(report);
    }
    Reply {
        exit_code: match status {
            Some(WaitStatus::Exited(_, code)) => code,
            Some(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
            _ => 128 + libc::SIGKILL,
        },
        ..Default::default()
    }
}

/// The forked child: its own session, the action's stdio and directory, then exec.
fn exec_child(
    candidates: &[CString],
    argv: &[CString],
    envp: &[CString],
    cwd: &CString,
    stdio: [i32; 3],
    report: OwnedFd,
) -> ! {
    let fail = |step: &str| -> ! {
        let err = io::Error::last_os_error();
        let msg = format!("{step}: {err}");
        // SAFETY: writing our message to our pipe, then leaving without running exit hooks.
        unsafe {
            libc::write(report.as_raw_fd(), msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (ptrs(argv), ptrs(envp));
    // SAFETY: plain system calls in the freshly forked child of a single-threaded process.
    unsafe {
        libc::setsid();
        for (target, fd) in stdio.into_iter().enumerate() {
            if libc::dup2(fd, target as i32) < 0 {
                fail("attaching stdio");
            }
        }
        if libc::chdir(cwd.as_ptr()) != 0 {
            fail("entering the working directory");
        }
        let mut denied = false;
        for candidate in candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ELOOP | libc::ENAMETOOLONG => {}
                _ => fail("executing the program"),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail("executing the program")
    }
}

/// Reaps children (orphans of the action among them) until `pid` has exited.
fn reap_until(pid: Pid) -> Option<WaitStatus> {
    loop {
        match wait() {
            Ok(status) if status.pid() == Some(pid) => return Some(status),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// Kills every other process in the sandbox's pid namespace and reaps them all.
fn kill_the_rest() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    loop {
        match wait() {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return, // ECHILD: nothing is left.
        }
    }
}

/// What the writable directories held when the sandbox started.
struct Baseline {
    dirs: BTreeMap<PathBuf, (u32, Vec<OsString>)>,
}

impl Baseline {
    fn take() -> Self {
        let mut dirs = BTreeMap::new();
        for dir in WRITABLE {
            let Ok(meta) = std::fs::symlink_metadata(dir) else {
                continue;
            };
            let names = list(Path::new(dir)).unwrap_or_default();
            dirs.insert(PathBuf::from(dir), (meta.permissions().mode(), names));
        }
        Baseline { dirs }
    }

    /// Puts the writable places back; false if anything could not be.
    fn restore(&self) -> bool {
        let mut clean = true;
        for (dir, (mode, names)) in &self.dirs {
            clean &= std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode)).is_ok();
            let Ok(now) = list(dir) else {
                clean = false;
                continue;
            };
            for name in now.iter().filter(|n| !names.contains(n)) {
                clean &= remove_tree(&dir.join(name)).is_ok();
            }
        }
        clean & remove_sysv_ipc()
    }
}

fn list(dir: &Path) -> io::Result<Vec<OsString>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// Removes a file or a whole tree, making directories writable on the way (the action
/// may have left them read-only; everything in the sandbox belongs to one uid).
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

/// Removes the System V shared memory segments, semaphore sets and message queues of the
/// sandbox's IPC namespace; false if one could not be.
fn remove_sysv_ipc() -> bool {
    let ids = |table: &str| -> Vec<i32> {
        let text = std::fs::read(Path::new("/proc/sysvipc").join(table)).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    };
    let mut clean = true;
    // SAFETY: IPC_RMID on ids the kernel listed; a stale one just fails.
    unsafe {
        for id in ids("shm") {
            clean &= libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0;
        }
        for id in ids("sem") {
            clean &= libc::semctl(id, 0, libc::IPC_RMID) == 0;
        }
        for id in ids("msg") {
            clean &= libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0;
        }
    }
    clean
}

/// The argument that makes `rexd` run [`main`].
pub const SUBCOMMAND: &str = "sandbox-init";
