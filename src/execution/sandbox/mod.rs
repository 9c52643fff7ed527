//! Isolation of actions. With namespaces available, every action runs under bubblewrap in
//! user, mount, pid, network, ipc and uts namespaces of its own, in one of two views of the
//! filesystem (host or chroot, see [`crate::config::SandboxMode`]); without them, as a plain
//! child process. Either way it runs in its own process group, with resource limits, and
//! (when rexd is root) as a per-worker uid that owns its exec root but none of the CAS.
//! Actions in the default view run one after another in their worker's long-lived sandbox
//! ([`crate::execution::warm`]), emptied between them; the others get a new one each.
//!
//! bubblewrap rather than hand-made namespace code: it is a small, audited setuid-free tool
//! that gets the mount and pid-namespace details right. Starting and tearing down one costs
//! about 5 ms of CPU, which is why workers keep theirs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

mod bwrap;
mod options;

pub use bwrap::HOST_EXEC_ROOT;
pub use options::{ActionOptions, SANDBOX_PROPERTIES};

use crate::config::{SandboxBackend, SandboxConfig};
use crate::error::Error;
use crate::execution::spawn;
use crate::proto::remote_execution::Command;

/// Which mechanism is in force on this server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Bwrap(PathBuf),
    Plain,
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Bwrap(_) => "bwrap",
            Backend::Plain => "plain",
        }
    }
}

/// The sandbox settings in force, shared by all workers.
pub struct Sandbox {
    pub backend: Backend,
    config: SandboxConfig,
    /// Whether rexd can run actions under other uids.
    is_root: bool,
    /// An empty, world-traversable directory that exec roots are bind-mounted on, each in
    /// its action's private mount namespace.
    mount_point: PathBuf,
    /// Set once a long-lived sandbox failed to start: from then on, one per action.
    reuse_failed: std::sync::atomic::AtomicBool,
}

impl Sandbox {
    /// Chooses the backend, probing once whether bubblewrap works here.
    pub fn detect(config: &SandboxConfig) -> Result<Self, Error> {
        let is_root = nix::unistd::geteuid().is_root();
        let mut sandbox = Sandbox {
            backend: Backend::Plain,
            config: config.clone(),
            is_root,
            mount_point: if Path::new("/run").is_dir() {
                PathBuf::from("/run/rexd-exec-root")
            } else {
                PathBuf::from("/tmp/.rexd-exec-root")
            },
            reuse_failed: Default::default(),
        };
        if config.backend == SandboxBackend::Plain {
            return Ok(sandbox);
        }
        if is_root {
            std::fs::create_dir_all(&sandbox.mount_point)
                .map_err(|e| Error::io(format!("creating {}", sandbox.mount_point.display()), e))?;
        }
        match sandbox.probe_bwrap() {
            Ok(()) => sandbox.backend = Backend::Bwrap(config.bwrap_path.clone()),
            Err(why) if config.backend == SandboxBackend::Bwrap => {
                return Err(Error::Unsatisfiable(format!(
                    "sandbox.backend is \"bwrap\" but bubblewrap does not work here: {why}"
                )));
            }
            Err(why) => tracing::warn!(
                "Linux namespaces are unavailable ({why}); actions run as plain processes \
                 WITHOUT isolation. Install bubblewrap and allow unprivileged user namespaces, \
                 or set sandbox.backend = \"plain\" to silence this warning."
            ),
        }
        Ok(sandbox)
    }

    fn probe_bwrap(&self) -> Result<(), String> {
        let mut cmd = std::process::Command::new(&self.config.bwrap_path);
        cmd.args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if self.is_root {
            use std::os::unix::process::CommandExt;
            cmd.uid(self.config.run_as_uid_base)
                .gid(self.config.run_as_uid_base);
        }
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.config.bwrap_path.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
        }
    }

    /// The uid and gid that worker `slot` runs actions as, if rexd can switch users (it is
    /// root). Such an action owns its exec root but cannot write or chmod the CAS files it is
    /// handed, and its process cap counts only its own processes.
    pub fn run_as(&self, slot: usize) -> Option<(u32, u32)> {
        self.is_root.then(|| {
            let id = self.config.run_as_uid_base + slot as u32;
            (id, id)
        })
    }

    pub fn max_output_size(&self) -> u64 {
        self.config.max_output_size.as_u64()
    }

    /// Builds the process for an action: bubblewrap wrapping the command, or the command
    /// itself, with its output going to `stdout` and `stderr`.
    pub fn command(
        &self,
        command: &Command,
        exec_root: &Path,
        options: &ActionOptions,
        run_as: Option<(u32, u32)>,
        (stdout, stderr): (std::fs::File, std::fs::File),
    ) -> Result<spawn::Prepared, Error> {
        let (program, args, cwd): (OsString, Vec<OsString>, PathBuf) = match &self.backend {
            Backend::Plain => (
                command.arguments[0].clone().into(),
                command.arguments[1..].iter().map(OsString::from).collect(),
                // A plain process starts in its exec root (the child changes directory
                // before it drops privileges), so it needs no mount to reach it.
                exec_root.join(&command.working_directory),
            ),
            Backend::Bwrap(bwrap) => (
                bwrap.clone().into(),
                self.bwrap_args(command, exec_root, options, run_as),
                PathBuf::from("/"),
            ),
        };
        let env = command
            .environment_variables
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        self.process(Process {
            program,
            args,
            env,
            cwd,
            stdio: (stdout, stderr),
            extra_fds: Vec::new(),
            exec_root,
            run_as,
        })
        .map_err(|e| {
            Error::BadInput(format!(
                "cannot start command {:?}: {e}",
                command.arguments[0]
            ))
        })
    }

    /// Whether an action with these options may run in its worker's long-lived sandbox
    /// ([`crate::execution::warm`]): the server's default view (host mode, no network, the
    /// worker's own ids). Anything else gets a sandbox of its own.
    pub fn reusable_for(&self, options: &ActionOptions) -> bool {
        matches!(self.backend, Backend::Bwrap(_))
            && self.config.reuse_sandboxes
            && !self.reuse_failed.load(std::sync::atomic::Ordering::Relaxed)
            && *options == ActionOptions::default()
    }

    /// After a long-lived sandbox failed to start: warns once, and builds one per action.
    pub fn stop_reusing(&self, why: &Error) {
        if !self
            .reuse_failed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(error = %why, "cannot start a long-lived sandbox; every action gets a sandbox of its own from now on");
        }
    }

    /// The program that runs as pid 1 of a long-lived sandbox (`rexd sandbox-init`).
    pub fn init_program(&self) -> std::io::Result<PathBuf> {
        match &self.config.init_program {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe(),
        }
    }

    fn process(&self, p: Process<'_>) -> std::io::Result<spawn::Prepared> {
        // Under another uid, the action cannot traverse the private data directory to its
        // exec root; the child first bind-mounts it at a public mount point in a mount
        // namespace of its own.
        let bind = match (&self.backend, p.run_as) {
            (Backend::Bwrap(_), Some(_)) => Some((
                c_path(p.exec_root).map_err(std::io::Error::other)?,
                c_path(&self.mount_point).map_err(std::io::Error::other)?,
            )),
            _ => None,
        };
        spawn::Spec {
            program: p.program,
            args: p.args,
            // bwrap runs with the action's environment, so its PATH lookup of arguments[0]
            // happens inside the sandbox with the action's PATH.
            env: p.env,
            cwd: p.cwd,
            stdout: p.stdio.0,
            stderr: p.stdio.1,
            extra_fds: p.extra_fds,
            credentials: p
                .run_as
                .map(|(uid, gid)| spawn::Credentials { bind, uid, gid }),
            max_processes: p.run_as.map(|_| self.config.max_processes),
            max_memory: self.config.memory_limit.map(|m| m.as_u64()),
            max_file_size: self.config.max_output_size.as_u64(),
        }
        .prepare()
    }
}

/// What [`Sandbox::process`] starts: bubblewrap or the command itself.
struct Process<'a> {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    stdio: (std::fs::File, std::fs::File),
    extra_fds: Vec<std::os::fd::OwnedFd>,
    exec_root: &'a Path,
    run_as: Option<(u32, u32)>,
}

fn c_path(path: &Path) -> Result<std::ffi::CString, Error> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Bug(format!("path {} contains NUL", path.display())))
}

/// Kills every process left running under `uid` (a plain-mode action's daemons that left its
/// process group). A short-lived thread takes that uid for itself alone (the raw syscall
/// changes one thread's credentials, unlike libc's setuid) and signals everything the uid
/// may signal; no process is spawned.
pub fn kill_all_of_uid(uid: u32) {
    let killer = std::thread::spawn(move || {
        use nix::libc;
        // SAFETY: raw syscalls on this thread's own credentials; the thread ends right after,
        // so the dropped privileges never serve anything else.
        unsafe {
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::kill(-1, libc::SIGKILL);
        }
        Ok(())
    });
    match killer.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(uid, error = %e, "cannot clean up an action's processes"),
        Err(_) => tracing::warn!(uid, "the clean-up thread panicked"),
    }
}

impl Sandbox {
    /// How an action runs here, for the server log of a failed one: backend, identity,
    /// network, and the limits it runs under.
    pub fn describe(&self, run_as: Option<(u32, u32)>, options: &ActionOptions) -> String {
        let who = match run_as {
            Some((uid, _)) => format!("uid {uid}"),
            None => "the server's own user".into(),
        };
        let network = if options.network { "on" } else { "off" };
        let memory = self
            .config
            .memory_limit
            .map_or("none".to_string(), |m| m.to_string());
        format!(
            "{} ({:?} mode) as {who}, network {network}; limits: max_processes {}, memory_limit {memory}, \
             max_output_size {}",
            self.backend.name(),
            options.mode,
            self.config.max_processes,
            self.config.max_output_size
        )
    }
}
