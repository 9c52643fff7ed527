//! The tier's background work: the age-based expiry sweep, refreshing objects in use so
//! they never expire, draining the write-back queue, and probing a store that stopped
//! answering so health recovers without traffic.
//!
//! Expiry: an object whose last-modified time is older than `max_age_days` is deleted by
//! the sweep, which every frontend runs (deleting twice is harmless). An object in use, one
//! that FindMissingBlobs, a read or an action-cache hit touched, is copied onto itself once
//! it passes half that age, which resets its last-modified time; so a hot object never
//! reaches the limit, whichever frontend uses it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use object_store::path::Path;
use tokio::sync::mpsc;

use super::Remote;
use super::known::Known;
use super::write_back::{Pending, WriteBack};
use crate::error::Error;
use crate::storage::Cas;

/// Most objects one sweep deletes; the next sweep takes the rest.
const SWEEP_BATCH: usize = 100_000;
/// Most refreshes waiting; past it, touches are dropped (and counted) until it drains.
const REFRESH_QUEUE: usize = 10_000;
/// Longest wait between write-back retries while the store is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an unreachable store is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Deletes the objects older than the maximum age as of `now`; how many it deleted.
pub async fn sweep_once(remote: &Arc<Remote>, now: SystemTime) -> Result<usize, Error> {
    let Some(max_age) = remote.config.max_age() else {
        return Ok(0);
    };
    let cutoff = now.checked_sub(max_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let expired = remote.older_than(cutoff, SWEEP_BATCH).await?;
    let deleted = futures::stream::iter(expired)
        .map(|key| {
            let remote = remote.clone();
            async move { remote.delete(&key).await }
        })
        .buffer_unordered(remote.config.max_concurrency)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    metrics::counter!("rexd_remote_expired_objects_total").increment(deleted as u64);
    tracing::info!(deleted, "object store sweep done");
    Ok(deleted)
}

/// Hands objects in use to the refresher task.
#[derive(Clone)]
pub struct Refresher {
    tx: mpsc::Sender<Path>,
}

impl Refresher {
    /// Notes a use of `key`; refreshes it in the background if it is getting old.
    pub fn touch(&self, remote: &Remote, key: Path) {
        if remote.config.max_age().is_none()
            || remote.known.check(key.as_ref(), SystemTime::now()) == Known::Present
        {
            return;
        }
        if self.tx.try_send(key).is_err() {
            metrics::counter!("rexd_remote_refreshes_dropped_total").increment(1);
        }
    }
}

/// Refreshes `key` if it is past half its age; whether it did.
pub async fn refresh(remote: &Remote, key: &Path, now: SystemTime) -> Result<bool, Error> {
    let state = match remote.known.check(key.as_ref(), now) {
        Known::Unknown => match remote.head(key).await? {
            None => return Ok(false),
            Some(_) => remote.known.check(key.as_ref(), now),
        },
        known => known,
    };
    if state != Known::Aging {
        return Ok(false);
    }
    remote.copy_onto_itself(key).await?;
    metrics::counter!("rexd_remote_refreshes_total").increment(1);
    Ok(true)
}

/// Starts the tier's background tasks; the handles abort them when the server stops.
pub fn spawn(
    remote: Arc<Remote>,
    cas: Cas,
    queue: Option<Arc<WriteBack>>,
) -> (Refresher, Vec<tokio::task::AbortHandle>) {
    let (tx, mut rx) = mpsc::channel::<Path>(REFRESH_QUEUE);
    let r = remote.clone();
    let mut tasks = Vec::new();
    let mut spawn = |task: futures::future::BoxFuture<'static, ()>| {
        tasks.push(tokio::spawn(task).abort_handle())
    };
    spawn(Box::pin(async move {
        while let Some(key) = rx.recv().await {
            if let Err(e) = refresh(&r, &key, SystemTime::now()).await {
                tracing::debug!(%key, error = %e, "refresh failed; the next use retries it");
            }
        }
    }));
    if remote.config.max_age().is_some() {
        let r = remote.clone();
        let every = Duration::from_secs(remote.config.sweep_interval_secs);
        spawn(Box::pin(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                if let Err(e) = sweep_once(&r, SystemTime::now()).await {
                    tracing::warn!(error = %e, "object store sweep failed");
                }
            }
        }));
    }
    let r = remote.clone();
    spawn(Box::pin(async move {
        let mut reachable = r.watch_reachable();
        loop {
            if *reachable.borrow_and_update() {
                if reachable.changed().await.is_err() {
                    return;
                }
                continue;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
            r.probe().await;
        }
    }));
    if let Some(queue) = queue {
        spawn(Box::pin(drain(remote, cas, queue)));
    }
    (Refresher { tx }, tasks)
}

/// Uploads queued entries until the process ends, backing off while the store is down.
async fn drain(remote: Arc<Remote>, cas: Cas, queue: Arc<WriteBack>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        metrics::gauge!("rexd_remote_write_back_queue").set(queue.len() as f64);
        let batch = queue.peek(remote.config.max_concurrency);
        if batch.is_empty() {
            queue.queued.notified().await;
            continue;
        }
        let results: Vec<(Pending, Result<(), Error>)> = futures::stream::iter(batch)
            .map(|pending| {
                let (remote, cas) = (remote.clone(), cas.clone());
                async move {
                    let result = upload(&remote, &cas, &pending).await;
                    (pending, result)
                }
            })
            .buffer_unordered(remote.config.max_concurrency)
            .collect()
            .await;
        let mut failed = false;
        for (pending, result) in results {
            match result {
                Ok(()) => queue.done(&pending),
                Err(e) => {
                    tracing::debug!(error = %e, "write-back upload failed; retrying later");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

/// Sends one queued entry to the bucket.
pub async fn upload(remote: &Arc<Remote>, cas: &Cas, pending: &Pending) -> Result<(), Error> {
    match pending {
        Pending::Blob(digest) => {
            let key = remote.keys.blob(digest);
            if remote.known.check(key.as_ref(), SystemTime::now()) == Known::Present {
                return Ok(());
            }
            remote
                .put_file(&key, &cas.blob_path(digest), digest.size())
                .await
        }
        Pending::Object { key, body } => {
            let key = Path::parse(key)
                .map_err(|e| Error::Bug(format!("queued object key {key:?}: {e}")))?;
            remote.put_bytes(&key, body.clone()).await
        }
    }
}
