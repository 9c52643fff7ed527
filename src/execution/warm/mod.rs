//! A worker's long-lived sandbox. bubblewrap's namespace and mount set-up and teardown cost
//! about 5 ms of CPU per action on a 2-core machine, more than a short compile's own
//! process start; so each worker starts one sandbox in the default view and runs action
//! after action in it through its pid 1 ([`init`]), which empties it between actions.
//!
//! An action is run in a fresh sandbox instead whenever this one could carry anything
//! over: it asked for another view ([`Sandbox::reusable_for`]), the worker's exec root was
//! replaced, the last action timed out or was cancelled (the sandbox is killed whole, as a
//! per-action one would be), or pid 1 reported that it could not empty it.

pub mod init;
pub mod wire;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::execution::runner::RunEnd;
use crate::execution::sandbox::{HOST_EXEC_ROOT, Sandbox};
use crate::execution::spawn;
use crate::proto::remote_execution::Command;
use wire::{Reply, RunRequest};

/// How long a new sandbox may take to greet; far above bubblewrap's few milliseconds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How [`WarmSandbox::run`] went.
pub enum WarmRun {
    /// The sandbox took the action: how it ended, and whether the sandbox may take another.
    Ran(Result<RunEnd, Error>, bool),
    /// The action never reached the sandbox (it had died); the sandbox is unusable.
    NotSent(Error),
}

/// The request frame for `command`, run in the exec root as the sandbox sees it.
fn request_frame(command: &Command) -> Result<Vec<u8>, Error> {
    let request = RunRequest {
        argv: command
            .arguments
            .iter()
            .map(|a| a.clone().into_bytes())
            .collect(),
        env: command
            .environment_variables
            .iter()
            .map(|v| format!("{}={}", v.name, v.value).into_bytes())
            .collect(),
        cwd: Path::new(HOST_EXEC_ROOT)
            .join(&command.working_directory)
            .into_os_string()
            .into_encoded_bytes(),
    };
    let frame = wire::frame(&request);
    if frame.len() > wire::MAX_MESSAGE {
        return Err(Error::BadInput(format!(
            "the command line and environment take {} bytes, over {}",
            frame.len(),
            wire::MAX_MESSAGE
        )));
    }
    Ok(frame)
}

/// One worker's running sandbox.
pub struct WarmSandbox {
    /// bubblewrap's outer process; killing it takes the whole sandbox down.
    bwrap: spawn::Child,
    control: UnixStream,
    /// Device and inode of the exec root bound into the sandbox.
    root: (u64, u64),
}

fn identity(dir: &Path) -> Result<(u64, u64), Error> {
    let meta =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    Ok((meta.dev(), meta.ino()))
}

impl WarmSandbox {
    /// Starts a sandbox around `exec_root` and waits for its pid 1 to greet.
    pub async fn start(
        sandbox: &Sandbox,
        exec_root: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<Self, Error> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| Error::io("making a sandbox control socket", e))?;
        let program = sandbox
            .init_program()
            .map_err(|e| Error::io("finding the sandbox init program", e))?;
        let init = std::fs::File::open(&program)
            .map_err(|e| Error::io(format!("opening {}", program.display()), e))?;
        let prepared = sandbox.warm_command(exec_root, run_as, theirs.into(), init.into())?;
        let bwrap = spawn::spawn(prepared)
            .await
            .map_err(|e| Error::io("starting a long-lived sandbox", e))?;
        ours.set_nonblocking(true)
            .map_err(|e| Error::io("configuring a sandbox control socket", e))?;
        let control = UnixStream::from_std(ours)
            .map_err(|e| Error::io("registering a sandbox control socket", e))?;
        let mut warm = WarmSandbox {
            bwrap,
            control,
            root: identity(exec_root)?,
        };
        let greeting = tokio::time::timeout(START_TIMEOUT, warm.reply())
            .await
            .map_err(|_| Error::Bug("a new sandbox did not greet in time".into()))??;
        if !greeting.ready {
            return Err(Error::Bug("a new sandbox sent no greeting".into()));
        }
        tracing::debug!(pid = warm.bwrap.id(), "long-lived sandbox started");
        Ok(warm)
    }

    /// Whether this sandbox still shows `exec_root` (it is replaced when a failed action's
    /// directory is kept, or when emptying it failed).
    pub fn shows(&self, exec_root: &Path) -> bool {
        identity(exec_root).is_ok_and(|id| id == self.root)
    }

    /// Runs one action. The action's stdout and stderr stay the caller's: the sandbox gets
    /// copies of the descriptors, so an action that never reached the sandbox can still run
    /// elsewhere.
    pub async fn run(
        &mut self,
        command: &Command,
        stdio: (&std::fs::File, &std::fs::File),
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> WarmRun {
        if self.bwrap.has_exited() {
            return WarmRun::NotSent(Error::Bug("the sandbox had exited".into()));
        }
        let frame = match request_frame(command) {
            Ok(frame) => frame,
            Err(e) => return WarmRun::Ran(Err(e), true),
        };
        if let Err(e) = self.send(&frame, stdio).await {
            return WarmRun::NotSent(e);
        }
        let reply = tokio::select! {
            reply = self.reply() => reply,
            _ = tokio::time::sleep(timeout) => return WarmRun::Ran(Ok(RunEnd::TimedOut), false),
            _ = cancel.cancelled() => return WarmRun::Ran(Ok(RunEnd::Cancelled), false),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return WarmRun::Ran(Err(e), false),
        };
        if reply.tainted {
            tracing::warn!(
                "a long-lived sandbox could not be emptied after an action; replacing it"
            );
        }
        let end = if reply.start_error.is_empty() {
            Ok(RunEnd::Exited(reply.exit_code))
        } else {
            Err(Error::BadInput(format!(
                "cannot start command {:?}: {}",
                command.arguments[0], reply.start_error
            )))
        };
        WarmRun::Ran(end, !reply.tainted)
    }

    async fn send(
        &mut self,
        frame: &[u8],
        (stdout, stderr): (&std::fs::File, &std::fs::File),
    ) -> Result<(), Error> {
        let broken = |e| Error::io("sending an action to its sandbox", e);
        let sent = self
            .control
            .async_io(Interest::WRITABLE, || {
                wire::send_with_fds(&self.control, frame, &[stdout, stderr])
            })
            .await
            .map_err(broken)?;
        self.control.write_all(&frame[sent..]).await.map_err(broken)
    }

    async fn reply(&mut self) -> Result<Reply, Error> {
        let broken = |e| Error::io("reading the sandbox's answer", e);
        let mut header = [0u8; 4];
        self.control.read_exact(&mut header).await.map_err(broken)?;
        let mut body = vec![0; wire::body_len(header).map_err(broken)?];
        self.control.read_exact(&mut body).await.map_err(broken)?;
        wire::decode(&body).map_err(broken)
    }
}
