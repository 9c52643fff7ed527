//! bubblewrap's command lines: the namespaces and the view of the filesystem an action
//! gets, for a sandbox of its own or for a worker's long-lived one.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{ActionOptions, Backend, Process, Sandbox};
use crate::config::SandboxMode;
use crate::error::Error;
use crate::execution::spawn;
use crate::proto::remote_execution::Command;

/// Where the exec root appears in host mode: a fixed path, so that absolute paths that end
/// up in outputs (debug info, say) are the same on every run.
pub const HOST_EXEC_ROOT: &str = "/tmp/rexd/root";

impl Sandbox {
    /// bubblewrap starting a worker's long-lived sandbox: the default view, with the init
    /// program as its pid 1. `control` becomes its descriptor 3 and `init` (the opened
    /// program, so no path to it need be visible to the worker's uid) descriptor 4.
    pub fn warm_command(
        &self,
        exec_root: &Path,
        run_as: Option<(u32, u32)>,
        control: std::os::fd::OwnedFd,
        init: std::os::fd::OwnedFd,
    ) -> Result<spawn::Prepared, Error> {
        let Backend::Bwrap(bwrap) = &self.backend else {
            return Err(Error::Bug("a long-lived sandbox needs bubblewrap".into()));
        };
        let mut args = self.isolation_args(exec_root, &ActionOptions::default(), run_as);
        args.extend(
            [
                "--as-pid-1",
                "--mqueue",
                "/dev/mqueue",
                "--chdir",
                "/",
                "--",
                "/proc/self/fd/4",
                crate::execution::warm::init::SUBCOMMAND,
            ]
            .map(OsString::from),
        );
        let devnull = |what| {
            std::fs::File::options()
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::io(format!("opening /dev/null for {what}"), e))
        };
        self.process(Process {
            program: bwrap.clone().into(),
            args,
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            stdio: (devnull("stdout")?, devnull("stderr")?),
            extra_fds: vec![control, init],
            exec_root,
            run_as,
        })
        .map_err(|e| Error::io("preparing a long-lived sandbox", e))
    }

    /// bubblewrap's arguments: fresh namespaces, the chosen view of the filesystem, then
    /// the action's own command line.
    pub(super) fn bwrap_args(
        &self,
        command: &Command,
        exec_root: &Path,
        options: &ActionOptions,
        run_as: Option<(u32, u32)>,
    ) -> Vec<OsString> {
        let mut args = self.isolation_args(exec_root, options, run_as);
        let inside_root = match options.mode {
            SandboxMode::Host => Path::new(HOST_EXEC_ROOT),
            SandboxMode::Chroot => Path::new("/"),
        };
        args.push("--chdir".into());
        args.push(inside_root.join(&command.working_directory).into());
        args.push("--".into());
        args.extend(command.arguments.iter().map(OsString::from));
        args
    }

    /// The namespaces and the view of the filesystem, without a command.
    fn isolation_args(
        &self,
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
        match options.mode {
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
            }
            SandboxMode::Chroot => {
                args.push("--bind".into());
                args.push(source.into());
                args.push("/".into());
                args.extend(
                    ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"].map(OsString::from),
                );
            }
        }
        args
    }
}
