//! The server log of a failed action (`ExecuteResponse.server_logs`, which Bazel downloads
//! for failed actions): a few lines saying where it ran, how it was sandboxed, which limit it
//! hit and why it ended, stored in the CAS like any blob.

use std::fmt::Write as _;

use crate::digest::Digest;
use crate::error::Error;
use crate::execution::completion::RunOutcome;
use crate::execution::runner::EXIT_FILE_TOO_LARGE;
use crate::proto::remote_execution::{ExecutedActionMetadata, LogFile};
use crate::storage::TieredStore;

/// The key the log has in `server_logs`.
pub const LOG_NAME: &str = "rexd";

/// Writes the log of a failed run; `None` (after logging why) if it cannot be stored, which
/// must not change the action's outcome.
pub async fn store(
    store: &TieredStore,
    action: &Digest,
    operation: &str,
    outcome: &RunOutcome,
    metadata: &ExecutedActionMetadata,
) -> Option<LogFile> {
    let text = render(action, operation, outcome, metadata);
    let digest = Digest::of(action.function(), text.as_bytes());
    let cas = store.cas.clone();
    let stored = crate::offload::blocking(move || {
        cas.put(&digest, text.as_bytes())?;
        cas.pin([&digest]);
        Ok(())
    })
    .await;
    // The object-store copy follows in the background: a bucket outage must not hold up the
    // report of the failure itself.
    if stored.is_ok() {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.commit_upload(&[digest], &[]).await {
                tracing::warn!(error = %e, "cannot replicate a failed action's server log");
            }
        });
    }
    match stored {
        Ok(()) => Some(LogFile {
            digest: Some(digest.to_proto()),
            human_readable: true,
        }),
        Err(e) => {
            tracing::warn!(operation, error = %e, "cannot store a failed action's server log");
            None
        }
    }
}

/// The log's text: one `key: value` line per fact.
pub fn render(
    action: &Digest,
    operation: &str,
    outcome: &RunOutcome,
    metadata: &ExecutedActionMetadata,
) -> String {
    let mut text = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(text, "{key}: {value}");
    };
    line("action", &format!("{action:?}"));
    line("operation", operation);
    line("worker", &metadata.worker);
    line(
        "sandbox",
        outcome
            .sandbox
            .as_deref()
            .unwrap_or("the remote bot's own (it does not report one)"),
    );
    line("exit code", &outcome.result.exit_code.to_string());
    line("limit hit", &limit_hit(outcome));
    line(
        "reason",
        &match &outcome.error {
            Some(e) => e.to_string(),
            None => format!(
                "the command exited with code {}{}",
                outcome.result.exit_code,
                signal_note(outcome.result.exit_code)
            ),
        },
    );
    text
}

fn limit_hit(outcome: &RunOutcome) -> String {
    match &outcome.error {
        Some(Error::TimedOut(_)) => "the action's timeout".into(),
        Some(Error::OverLimit(_)) => "max_output_size".into(),
        _ if outcome.result.exit_code == EXIT_FILE_TOO_LARGE => "max_output_size".into(),
        _ if outcome.result.exit_code == 128 + nix::libc::SIGKILL => {
            "possibly memory_limit (the process was killed by SIGKILL)".into()
        }
        _ => "none".into(),
    }
}

/// Shells report death by signal N as exit code 128 + N; a bot may report any code.
fn signal_note(code: i32) -> String {
    let signal = code
        .checked_sub(128)
        .filter(|n| *n > 0)
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok());
    match signal {
        Some(signal) => format!(" (killed by {signal})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::proto::remote_execution::ActionResult;

    fn outcome(exit_code: i32, error: Option<Error>) -> RunOutcome {
        RunOutcome {
            result: ActionResult {
                exit_code,
                ..Default::default()
            },
            error,
            sandbox: Some("bwrap (Host mode) as uid 9000".into()),
        }
    }

    #[test]
    fn says_which_limit_was_hit_and_why() {
        let action = Digest::of(DigestFunction::Sha256, b"action");
        let metadata = ExecutedActionMetadata {
            worker: "host/slot-1".into(),
            ..Default::default()
        };
        let timed_out = render(
            &action,
            "op-1",
            &outcome(
                -1,
                Some(Error::TimedOut("action timed out after 2s".into())),
            ),
            &metadata,
        );
        assert!(timed_out.contains("worker: host/slot-1\n"), "{timed_out}");
        assert!(timed_out.contains("sandbox: bwrap (Host mode) as uid 9000\n"));
        assert!(timed_out.contains("limit hit: the action's timeout\n"));
        assert!(timed_out.contains("reason: action timed out after 2s\n"));
        let odd = render(&action, "op-4", &outcome(i32::MIN, None), &metadata);
        assert!(odd.contains("exited with code -2147483648\n"), "{odd}");
        let killed = render(&action, "op-2", &outcome(137, None), &metadata);
        assert!(
            killed.contains("limit hit: possibly memory_limit"),
            "{killed}"
        );
        assert!(
            killed.contains("exited with code 137 (killed by SIGKILL)"),
            "{killed}"
        );
        let plain = render(&action, "op-3", &outcome(1, None), &metadata);
        assert!(plain.contains("limit hit: none\n"), "{plain}");
        assert!(
            plain.contains("reason: the command exited with code 1\n"),
            "{plain}"
        );
    }
}
