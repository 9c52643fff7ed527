//! Filling the local disk from the bucket. A blob missing locally is streamed from the
//! object store into a [`crate::storage::BlobWriter`], which verifies it against its digest
//! before it gets its name, so nothing wrong in the bucket ever lands on disk.
//!
//! Concurrent requests for one blob share one GET: the first starts a fill task and may tap
//! its chunks as they arrive (a ByteStream Read streams them on to its client); the others
//! wait for the fill and read the local copy. The task runs to the end even if the reader
//! that started it goes away.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::mpsc;

use super::Remote;
use crate::digest::Digest;
use crate::error::Error;
use crate::resource::Compression;
use crate::storage::Cas;
use crate::storage::stream::{Chunk, WriteEnd, write_chunks};

/// Bytes handed on at once to the local writer and to a tapping reader: one ByteStream
/// message.
const CHUNK: usize = 1024 * 1024;

/// Where a fill sends the chunks it receives, for a reader streaming them on.
pub type Tap = mpsc::Sender<Result<Bytes, Error>>;

/// A fill's outcome: whether the blob is now stored locally.
type Fill = Shared<BoxFuture<'static, Result<bool, Error>>>;

/// The fills in progress, one per blob; an entry lives as long as its fill.
#[derive(Default)]
pub struct InFlight {
    fills: Mutex<HashMap<Digest, Fill>>,
    /// Readers that joined a fill another started, rather than sending a GET of their own.
    joined: AtomicU64,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.fills.lock().expect("fills lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn joined(&self) -> u64 {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Remote {
    /// Starts fetching `digest` into `cas`, or joins the fetch already under way. Returns
    /// the fill and whether `tap` was attached to it (only the fill's starter streams).
    pub fn start_fill(
        self: &Arc<Self>,
        cas: &Cas,
        digest: Digest,
        tap: Option<Tap>,
    ) -> (Fill, bool) {
        let mut fills = self.fetches.fills.lock().expect("fills lock");
        if let Some(fill) = fills.get(&digest) {
            self.fetches
                .joined
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (fill.clone(), false);
        }
        let (remote, cas) = (self.clone(), cas.clone());
        let task = tokio::spawn(async move {
            let outcome = remote.fill(&cas, digest, tap).await;
            remote
                .fetches
                .fills
                .lock()
                .expect("fills lock")
                .remove(&digest);
            outcome
        });
        let fill = async move {
            task.await
                .map_err(|e| Error::Bug(format!("fill task failed: {e}")))?
        }
        .boxed()
        .shared();
        fills.insert(digest, fill.clone());
        (fill, true)
    }

    /// Fetches `digest` into `cas` (sharing a fetch in progress); whether it is stored now.
    pub async fn fetch_into(self: &Arc<Self>, cas: &Cas, digest: Digest) -> Result<bool, Error> {
        self.start_fill(cas, digest, None).0.await
    }

    /// Runs one fill; a tapping reader is told how it ended when it did not end well, so
    /// its stream never ends as if whole after a short or wrong copy.
    async fn fill(&self, cas: &Cas, digest: Digest, mut tap: Option<Tap>) -> Result<bool, Error> {
        let outcome = self.fill_inner(cas, digest, &mut tap).await;
        if let Some(tap) = tap {
            let told = match &outcome {
                Ok(true) => None,
                Ok(false) => Some(Error::Absent(format!("blob {digest} is not in the CAS"))),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = told {
                let _ = tap.send(Err(e)).await;
            }
        }
        outcome
    }

    async fn fill_inner(
        &self,
        cas: &Cas,
        digest: Digest,
        tap: &mut Option<Tap>,
    ) -> Result<bool, Error> {
        let key = self.keys.blob(&digest);
        let Some(mut stream) = self.get_stream(&key, None).await? else {
            return Ok(false);
        };
        metrics::counter!("rexd_tier_reads_total", "tier" => "remote").increment(1);
        let writer_cas = cas.clone();
        // The bucket holds this blob durably; the local copy is a cache and needs no sync.
        let writer = crate::offload::blocking(move || writer_cas.writer(&digest))
            .await?
            .without_sync();
        let (tx, rx) = mpsc::channel::<Chunk>(2);
        let store = tokio::task::spawn_blocking(move || {
            write_chunks(
                writer,
                &digest,
                Compression::Identity,
                rx,
                &AtomicU64::new(0),
            )
        });
        let mut received = Ok(());
        // The HTTP body arrives in small pieces; the disk and the reader get whole chunks.
        let mut pending = BytesMut::new();
        let mut writer_failed = false;
        while !writer_failed {
            let next = stream.next().await;
            let ended = !matches!(next, Some(Ok(_)));
            match next {
                Some(Ok(data)) => pending.extend_from_slice(&data),
                Some(Err(e)) => received = Err(e),
                None => {}
            }
            if pending.len() >= CHUNK || (ended && !pending.is_empty()) {
                let data = pending.split().freeze();
                // The disk and the reader take the chunk at the same time.
                let to_reader = async {
                    match tap.as_ref() {
                        Some(t) => t.send(Ok(data.clone())).await.is_ok(),
                        None => true,
                    }
                };
                let (stored, delivered) =
                    tokio::join!(tx.send(Chunk::Data(data.clone())), to_reader);
                if !delivered {
                    *tap = None; // The reader left; the fill goes on.
                }
                // A writer that failed says why below.
                writer_failed = stored.is_err();
            }
            if ended {
                break;
            }
        }
        let last = if received.is_ok() {
            Chunk::Finish
        } else {
            Chunk::Abort
        };
        let _ = tx.send(last).await;
        drop(tx);
        let stored = store
            .await
            .map_err(|e| Error::Bug(format!("fill writer failed: {e}")))?;
        received?;
        match stored {
            Ok((WriteEnd::Committed, _)) => Ok(true),
            Ok((WriteEnd::Unfinished, _)) => Err(Error::Io(format!(
                "the object store's copy of {digest} ended early"
            ))),
            Err(Error::BadInput(why)) => {
                // Size or hash differ: the bucket holds something else under this name.
                tracing::error!(%digest, %why, "object in the bucket does not match its digest; not storing it");
                metrics::counter!("rexd_remote_corrupt_objects_total").increment(1);
                self.known.forget(key.as_ref());
                Err(Error::Io(format!(
                    "the object store's copy of {digest} does not match its digest"
                )))
            }
            Err(e) => Err(e),
        }
    }
}
