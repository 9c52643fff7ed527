//! Runs an action's process (built by the sandbox) with its output captured to files, and
//! kills its whole process group on exit, timeout or cancellation so nothing it started
//! lives on.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::execution::spawn;

/// How a run ended.
pub enum RunEnd {
    /// The process exited with this code (128 + signal if a signal killed it, as shells say).
    Exited(i32),
    TimedOut,
    Cancelled,
}

/// Exit code of a process killed by SIGXFSZ: it wrote past the output size limit.
pub const EXIT_FILE_TOO_LARGE: i32 = 128 + nix::libc::SIGXFSZ;

/// Runs the prepared process (its stdout and stderr already attached to files).
pub async fn run(
    process: spawn::Prepared,
    program: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<RunEnd, Error> {
    let spawning = std::time::Instant::now();
    let mut child = spawn::spawn(process)
        .await
        .map_err(|e| Error::BadInput(format!("cannot start command {program:?}: {e}")))?;
    tracing::debug!(
        pid = child.id(),
        spawn_us = spawning.elapsed().as_micros() as u64,
        "spawned"
    );
    let pgid = Some(Pid::from_raw(child.id() as i32));
    let end = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Error::Bug(format!("waiting for the action: {e}")))?;
            use std::os::unix::process::ExitStatusExt;
            RunEnd::Exited(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
        }
        _ = tokio::time::sleep(timeout) => RunEnd::TimedOut,
        _ = cancel.cancelled() => RunEnd::Cancelled,
    };
    // Whatever happened, nothing the action started may outlive it. (Under bubblewrap the
    // pid namespace dies with its first process as well.)
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if !matches!(end, RunEnd::Exited(_)) {
        let _ = child.wait().await;
    }
    Ok(end)
}
