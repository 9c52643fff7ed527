//! Large uploads to the bucket, as multipart uploads fed while the bytes arrive: a
//! ByteStream Write in write-through mode sends each chunk to the local writer and here at
//! once, so the bucket has the blob about when the disk does, and a local file (an action's
//! output) is read into one part after another.
//!
//! Memory is bounded: a few parts per upload ([`PART_SIZE`] × ([`PARTS_IN_FLIGHT`] + 1)),
//! and at most [`MAX_LARGE_PUTS`] such uploads at once; more wait for a turn.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use object_store::WriteMultipart;
use object_store::path::Path;
use tokio::sync::OwnedSemaphorePermit;

use super::{Op, Remote, unavailable};
use crate::error::Error;

/// Size of each part; S3 wants at least 5 MiB for all but the last.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Multipart uploads at once, across the server.
pub const MAX_LARGE_PUTS: usize = 4;

/// A multipart upload in progress; finish it, or abort it if the blob turned out wrong.
pub struct StreamingPut {
    remote: Arc<Remote>,
    key: Path,
    writer: WriteMultipart,
    written: u64,
    started: Instant,
    _turn: OwnedSemaphorePermit,
}

impl Remote {
    /// Starts a multipart upload of `key`, waiting for a turn among the large uploads.
    pub async fn begin_put(self: &Arc<Self>, key: Path) -> Result<StreamingPut, Error> {
        let turn = self
            .large_puts
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ShuttingDown("the object-store tier is stopping".into()))?;
        let started = Instant::now();
        let upload = self
            .observe(Op::Put, started, self.store.put_multipart(&key).await)
            .map_err(|e| unavailable("starting the upload of", &key, e))?;
        Ok(StreamingPut {
            remote: self.clone(),
            writer: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            key,
            written: 0,
            started,
            _turn: turn,
        })
    }
}

impl StreamingPut {
    /// Adds bytes; waits while the parts in flight are at their limit.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| unavailable("uploading", &self.key, e))?;
        self.writer.write(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Completes the upload: the object exists from now on.
    pub async fn finish(self) -> Result<(), Error> {
        let result = self.writer.finish().await;
        let remote = &self.remote;
        remote
            .observe(Op::Put, self.started, result)
            .map_err(|e| unavailable("completing the upload of", &self.key, e))?;
        metrics::counter!("rexd_remote_bytes_total", "direction" => "out").increment(self.written);
        remote.known.record(self.key.as_ref(), SystemTime::now());
        Ok(())
    }

    /// Gives the upload up; the store drops the parts sent.
    pub async fn abort(self) {
        if let Err(e) = self.writer.abort().await {
            tracing::debug!(key = %self.key, error = %e, "aborting a multipart upload failed");
        }
    }
}
