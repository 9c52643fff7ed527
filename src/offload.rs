//! Moves blocking work (file system calls, hashing, waiting on processes) off the async
//! threads onto tokio's blocking pool. Every layer uses it, so it lives at the crate root
//! rather than in any one of them.

use crate::error::Error;

/// Runs `f` on the blocking pool and returns its result.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Bug(format!("blocking task failed: {e}")))?
}
