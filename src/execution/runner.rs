//! Runs an action's command as a child process in its own process group, with exactly the
//! environment it asked for and its output captured to files; kills the whole group on
//! exit, timeout or cancellation so nothing it started lives on.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::proto::remote_execution::Command;

/// How a run ended.
pub enum RunEnd {
    /// The command exited (or was killed by a signal: 128 + signal, as shells report it).
    Exited(i32),
    TimedOut,
    Cancelled,
}

/// Runs `command` in `exec_root`, writing stdout and stderr to the given files.
pub async fn run(
    command: &Command,
    exec_root: &Path,
    stdout: File,
    stderr: File,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<RunEnd, Error> {
    let program = &command.arguments[0];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command.arguments[1..])
        .env_clear()
        .envs(
            command
                .environment_variables
                .iter()
                .map(|v| (&v.name, &v.value)),
        )
        .current_dir(exec_root.join(&command.working_directory))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::InvalidArgument(format!("cannot start command {program:?}: {e}")))?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let end = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Error::Internal(format!("waiting for the action: {e}")))?;
            use std::os::unix::process::ExitStatusExt;
            RunEnd::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        _ = tokio::time::sleep(timeout) => RunEnd::TimedOut,
        _ = cancel.cancelled() => RunEnd::Cancelled,
    };
    // Whatever happened, nothing the action started may outlive it.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if !matches!(end, RunEnd::Exited(_)) {
        let _ = child.wait().await;
    }
    Ok(end)
}
