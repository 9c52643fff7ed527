//! Isolation of actions. With namespaces available, every action runs under bubblewrap in
//! fresh user, mount, pid, network, ipc and uts namespaces, in one of two views of the
//! filesystem (host or chroot, see [`SandboxMode`]); without them, as a plain child process.
//! Either way it runs in its own process group, with resource limits, and (when rexd is
//! root) as a per-worker uid that owns its exec root but none of the CAS.
//!
//! bubblewrap rather than hand-made namespace code: it is a small, audited setuid-free tool
//! that gets the mount and pid-namespace details right, and costs about 6 ms per action.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::config::{InstanceConfig, SandboxBackend, SandboxConfig, SandboxMode};
use crate::error::Error;
use crate::execution::spawn;
use crate::proto::remote_execution::Command;

/// Platform properties the sandbox interprets, rather than matching them against the
/// workers' advertised properties.
pub const SANDBOX_PROPERTIES: &[&str] = &["network", "unixUID", "unixGID", "sandbox"];

/// What one action asked of the sandbox, checked against the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionOptions {
    pub mode: SandboxMode,
    pub network: bool,
    /// uid and gid the action sees inside its user namespace.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

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

    /// Checks the sandbox-related platform properties of an action against the instance's
    /// configuration.
    pub fn options_for(
        &self,
        platform: &BTreeMap<String, String>,
        instance: &InstanceConfig,
    ) -> Result<ActionOptions, Error> {
        let mut options = ActionOptions {
            mode: instance.sandbox,
            ..Default::default()
        };
        if let Some(mode) = platform.get("sandbox") {
            let selected = [SandboxMode::Host, SandboxMode::Chroot]
                .into_iter()
                .find(|m| m.name() == mode)
                .filter(|m| *m == instance.sandbox || instance.selectable_sandboxes.contains(m));
            options.mode = selected.ok_or_else(|| {
                Error::Unsatisfiable(format!(
                    "platform property sandbox={mode:?} is not available on instance {:?}; it runs {:?}{}",
                    instance.name,
                    instance.sandbox.name(),
                    if instance.selectable_sandboxes.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " and allows selecting {}",
                            instance.selectable_sandboxes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
                        )
                    }
                ))
            })?;
        }
        match platform.get("network").map(String::as_str) {
            None | Some("off") => {}
            Some("on") if self.config.allow_network => options.network = true,
            Some("on") => {
                return Err(Error::Unsatisfiable(
                    "platform property network=on is not allowed by this server's \
                     configuration (sandbox.allow_network = false)"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(Error::BadInput(format!(
                    "platform property network={other:?}: expected \"on\" or \"off\""
                )));
            }
        }
        let id = |key: &str| -> Result<Option<u32>, Error> {
            platform
                .get(key)
                .map(|v| {
                    v.parse().map_err(|_| {
                        Error::BadInput(format!(
                            "platform property {key}={v:?} is not a uid/gid number"
                        ))
                    })
                })
                .transpose()
        };
        options.uid = id("unixUID")?;
        options.gid = id("unixGID")?;
        if self.backend == Backend::Plain
            && (options.mode == SandboxMode::Chroot
                || options.uid.is_some()
                || options.gid.is_some())
        {
            return Err(Error::Unsatisfiable(format!(
                "this server runs actions without namespaces (sandbox backend \"plain\"), so it \
                 cannot honour {}",
                if options.mode == SandboxMode::Chroot {
                    "chroot mode"
                } else {
                    "unixUID/unixGID"
                }
            )));
        }
        Ok(options)
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
        // Under another uid, the action cannot traverse the private data directory to its
        // exec root; the child first bind-mounts it at a public mount point in a mount
        // namespace of its own.
        let bind = match (&self.backend, run_as) {
            (Backend::Bwrap(_), Some(_)) => Some((c_path(exec_root)?, c_path(&self.mount_point)?)),
            _ => None,
        };
        let spec = spawn::Spec {
            program,
            args,
            // bwrap runs with the action's environment, so its PATH lookup of arguments[0]
            // happens inside the sandbox with the action's PATH.
            env: command
                .environment_variables
                .iter()
                .map(|v| (v.name.clone(), v.value.clone()))
                .collect(),
            cwd,
            stdout,
            stderr,
            credentials: run_as.map(|(uid, gid)| spawn::Credentials { bind, uid, gid }),
            max_processes: run_as.map(|_| self.config.max_processes),
            max_memory: self.config.memory_limit.map(|m| m.as_u64()),
            max_file_size: self.config.max_output_size.as_u64(),
        };
        spec.prepare().map_err(|e| {
            Error::BadInput(format!(
                "cannot start command {:?}: {e}",
                command.arguments[0]
            ))
        })
    }

    /// bubblewrap's arguments: fresh namespaces, the chosen view of the filesystem, then
    /// the action's own command line.
    fn bwrap_args(
        &self,
        command: &Command,
        exec_root: &Path,
        options: &ActionOptions,
        run_as: Option<(u32, u32)>,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--unshare-user",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        .map(OsString::from)
        .to_vec();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        if !options.network {
            push(&["--unshare-net"]);
        }
        push(&["--die-with-parent", "--new-session", "--hostname", "rexd"]);
        let uid = options.uid.map(|u| u.to_string());
        let gid = options.gid.map(|g| g.to_string());
        if let Some(uid) = &uid {
            push(&["--uid", uid]);
        }
        if let Some(gid) = &gid {
            push(&["--gid", gid]);
        }
        let source = match run_as {
            Some(_) => self.mount_point.clone(),
            None => exec_root.to_path_buf(),
        };
        let inside_root = match options.mode {
            SandboxMode::Host => {
                push(&[
                    "--ro-bind",
                    "/",
                    "/",
                    "--dev",
                    "/dev",
                    "--proc",
                    "/proc",
                    "--tmpfs",
                    "/tmp",
                    "--bind",
                ]);
                args.push(source.into());
                args.push(HOST_EXEC_ROOT.into());
                Path::new(HOST_EXEC_ROOT)
            }
            SandboxMode::Chroot => {
                args.push("--bind".into());
                args.push(source.into());
                args.push("/".into());
                args.extend(
                    ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"].map(OsString::from),
                );
                Path::new("/")
            }
        };
        args.push("--chdir".into());
        args.push(inside_root.join(&command.working_directory).into());
        args.push("--".into());
        args.extend(command.arguments.iter().map(OsString::from));
        args
    }
}

/// Where the exec root appears in host mode: a fixed path, so that absolute paths that end
/// up in outputs (debug info, say) are the same on every run.
pub const HOST_EXEC_ROOT: &str = "/tmp/rexd/root";

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
