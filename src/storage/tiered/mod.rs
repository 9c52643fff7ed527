//! The two storage tiers as one store: the local disk first, the object store behind it.
//!
//! Without `[storage.remote]` every method here is the local store's own, at its cost. With
//! it:
//! - a blob missing locally counts as present if the bucket has it (FindMissingBlobs asks
//!   the record of known objects first, then HEADs the rest in parallel), and reads of it
//!   fill the local disk from the bucket;
//! - uploads reach the bucket before they are acknowledged (`write_policy = "through"`), or
//!   go to the persistent write-back queue (`"back"`);
//! - objects in use are refreshed so the bucket's age-based expiry never takes them.
//!
//! Action results are in [`action_results`], pulling an action's inputs in [`prefetch`],
//! and ByteStream reads in [`read`].

pub mod action_results;
pub mod prefetch;
pub mod read;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;

use crate::config::{RemoteConfig, WritePolicy};
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::storage::remote::Remote;
use crate::storage::remote::known::Known;
use crate::storage::remote::sweep::{self, Refresher};
use crate::storage::remote::upload::{self, StreamingPut};
use crate::storage::remote::write_back::{Pending, WriteBack};
use crate::storage::{ActionCache, Cas};

/// Both tiers; cheap to clone.
#[derive(Clone)]
pub struct TieredStore {
    pub cas: Cas,
    pub ac: ActionCache,
    tier: Option<Arc<Tier>>,
}

struct Tier {
    remote: Arc<Remote>,
    queue: Option<Arc<WriteBack>>,
    /// Set by [`TieredStore::start`], once a runtime runs the background tasks.
    refresher: Mutex<Option<Refresher>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TieredStore {
    /// The local tier alone.
    pub fn local(cas: Cas, ac: ActionCache) -> Self {
        TieredStore {
            cas,
            ac,
            tier: None,
        }
    }

    /// Adds the object-store tier when configured. Blocking (it reads the write-back queue).
    pub fn open(
        cas: Cas,
        ac: ActionCache,
        config: Option<&RemoteConfig>,
        fsync: bool,
    ) -> Result<Self, Error> {
        let Some(config) = config else {
            return Ok(Self::local(cas, ac));
        };
        let remote = Remote::open(config)?;
        let queue = match config.write_policy {
            WritePolicy::Through => None,
            WritePolicy::Back => Some(Arc::new(WriteBack::open(
                cas.data_dir(),
                &cas,
                fsync,
                config.max_write_back_queue,
            )?)),
        };
        tracing::info!(
            endpoint = config.endpoint.as_deref().unwrap_or("AWS"),
            bucket = %config.bucket,
            prefix = %config.prefix,
            policy = ?config.write_policy,
            "object store tier configured"
        );
        Ok(TieredStore {
            cas,
            ac,
            tier: Some(Arc::new(Tier {
                remote,
                queue,
                refresher: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
            })),
        })
    }

    /// Starts the tier's background tasks (refresh, sweep, write-back, probing); call once,
    /// from inside the runtime.
    pub fn start(&self) {
        if let Some(tier) = &self.tier {
            let (refresher, tasks) =
                sweep::spawn(tier.remote.clone(), self.cas.clone(), tier.queue.clone());
            *tier.refresher.lock().expect("refresher lock") = Some(refresher);
            *tier.tasks.lock().expect("tasks lock") = tasks;
        }
    }

    /// Stops the background tasks; what the write-back queue holds stays on disk for the
    /// next start.
    pub fn stop(&self) {
        if let Some(tier) = &self.tier {
            for task in tier.tasks.lock().expect("tasks lock").drain(..) {
                task.abort();
            }
            tier.refresher.lock().expect("refresher lock").take();
        }
    }

    /// Whether a client's upload must be synced to the local disk before it is
    /// acknowledged: not in write-through mode, where the bucket has it first.
    pub fn uploads_need_local_sync(&self) -> bool {
        match &self.tier {
            Some(tier) => tier.queue.is_some(),
            None => true,
        }
    }

    /// The object-store client, when the tier is on.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.tier.as_ref().map(|t| &t.remote)
    }

    /// Uploads waiting in the write-back queue.
    pub fn queued_uploads(&self) -> usize {
        self.tier
            .as_ref()
            .and_then(|t| t.queue.as_ref())
            .map_or(0, |q| q.len())
    }

    fn touch(&self, key: Path) {
        if let Some(tier) = &self.tier {
            if let Some(refresher) = tier.refresher.lock().expect("refresher lock").as_ref() {
                refresher.touch(&tier.remote, key);
            }
        }
    }

    /// The digests in neither tier. Present ones count as used: local ones are pinned for
    /// the minimum retention, remote ones refreshed when they are getting old.
    pub async fn find_missing(&self, digests: &[Digest]) -> Vec<Digest> {
        let mut missing = self.cas.find_missing(digests);
        let Some(tier) = &self.tier else {
            return missing;
        };
        metrics::counter!("rexd_tier_lookups_total", "tier" => "local")
            .increment((digests.len() - missing.len()) as u64);
        if tier.remote.config.max_age().is_some() && missing.len() < digests.len() {
            let absent: std::collections::HashSet<&Digest> = missing.iter().collect();
            for d in digests.iter().filter(|d| !absent.contains(d)) {
                self.touch(tier.remote.keys.blob(d));
            }
        }
        if missing.is_empty() {
            return missing;
        }
        let present = self.in_bucket(&missing).await;
        metrics::counter!("rexd_tier_lookups_total", "tier" => "remote")
            .increment(present.iter().filter(|p| **p).count() as u64);
        let mut present = present.into_iter();
        missing.retain(|_| !present.next().unwrap_or(false));
        missing
    }

    /// Whether the bucket holds each digest: from the record of known objects, else by
    /// HEADs in parallel. A HEAD that fails counts as absent, which is safe: the client
    /// uploads the blob again.
    async fn in_bucket(&self, digests: &[Digest]) -> Vec<bool> {
        let Some(tier) = &self.tier else {
            return vec![false; digests.len()];
        };
        let now = SystemTime::now();
        let mut present = vec![false; digests.len()];
        let mut to_ask = Vec::new();
        for (i, d) in digests.iter().enumerate() {
            let key = tier.remote.keys.blob(d);
            match tier.remote.known.check(key.as_ref(), now) {
                Known::Present => present[i] = true,
                Known::Aging => {
                    self.touch(key);
                    present[i] = true;
                }
                Known::Unknown => to_ask.push((i, key)),
            }
        }
        let remote = tier.remote.clone();
        let concurrency = remote.config.max_concurrency;
        let answers: Vec<(usize, bool)> = futures::stream::iter(to_ask)
            .map(move |(i, key)| {
                let remote = remote.clone();
                async move {
                    match remote.head(&key).await {
                        Ok(found) => (i, found.is_some()),
                        Err(e) => {
                            tracing::debug!(%key, error = %e, "HEAD failed; reporting the blob missing");
                            (i, false)
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (i, found) in answers {
            present[i] = found;
        }
        present
    }

    /// Whether one blob is stored in either tier (ByteStream's "already uploaded").
    pub async fn is_present(&self, digest: &Digest) -> Result<bool, Error> {
        if self.cas.is_present(digest).await? {
            return Ok(true);
        }
        Ok(self.in_bucket(std::slice::from_ref(digest)).await[0])
    }

    /// Fetches into the local disk the digests it lacks and the bucket holds; returns those
    /// in neither. Present local ones are pinned, as by [`TieredStore::find_missing`].
    pub async fn ensure_local(&self, digests: &[Digest]) -> Vec<Digest> {
        let missing = self.cas.find_missing(digests);
        let Some(tier) = &self.tier else {
            return missing;
        };
        if missing.is_empty() {
            return missing;
        }
        let (remote, cas) = (tier.remote.clone(), self.cas.clone());
        let concurrency = remote.config.max_concurrency;
        let fetched: Vec<(Digest, bool)> = futures::stream::iter(missing)
            .map(move |d| {
                let (remote, cas) = (remote.clone(), cas.clone());
                async move {
                    match remote.fetch_into(&cas, d).await {
                        Ok(found) => (d, found),
                        Err(e) => {
                            tracing::warn!(digest = %d, error = %e, "cannot fetch a blob from the object store");
                            (d, false)
                        }
                    }
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        fetched
            .into_iter()
            .filter(|(_, found)| !found)
            .map(|(d, _)| d)
            .collect()
    }

    /// Makes stored blobs durable in the bucket as the write policy says: uploaded before
    /// this returns (through), or queued persistently (back). UNAVAILABLE if the store
    /// cannot take them in write-through mode.
    pub async fn replicate(&self, digests: &[Digest]) -> Result<(), Error> {
        let Some(tier) = &self.tier else {
            return Ok(());
        };
        let remote = &tier.remote;
        let mut through: Vec<Digest> = Vec::new();
        match &tier.queue {
            None => through.extend_from_slice(digests),
            Some(queue) => {
                let (queue, cas, list) = (queue.clone(), self.cas.clone(), digests.to_vec());
                through = blocking(move || {
                    let mut full = Vec::new();
                    for d in list {
                        if !queue.push(&cas, Pending::Blob(d))? {
                            full.push(d);
                        }
                    }
                    Ok(full)
                })
                .await?;
            }
        }
        let (remote, cas) = (remote.clone(), self.cas.clone());
        let concurrency = remote.config.max_concurrency;
        // The write-back queue's own upload step, which skips blobs known to be there.
        let results: Vec<Result<(), Error>> = futures::stream::iter(through)
            .map(move |d| {
                let (remote, cas) = (remote.clone(), cas.clone());
                async move { sweep::upload(&remote, &cas, &Pending::Blob(d)).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Makes a client's uploads durable in the bucket. If the store cannot take them, the
    /// local copies of those `new` to the disk go too: a later FindMissingBlobs must not
    /// report present what was never acknowledged, or the client would not upload it again.
    pub async fn commit_upload(&self, uploaded: &[Digest], new: &[Digest]) -> Result<(), Error> {
        let result = self.replicate(uploaded).await;
        if result.is_err() {
            for d in new {
                self.cas.discard(d);
            }
        }
        result
    }

    /// A multipart upload to feed alongside a ByteStream Write of `digest`, so the bytes
    /// reach the bucket as they arrive: in write-through mode, for blobs of several parts.
    pub async fn begin_streamed_upload(
        &self,
        digest: &Digest,
    ) -> Result<Option<StreamingPut>, Error> {
        let Some(tier) = &self.tier else {
            return Ok(None);
        };
        if tier.queue.is_some() || digest.size() <= upload::PART_SIZE as u64 {
            return Ok(None);
        }
        let key = tier.remote.keys.blob(digest);
        tier.remote.begin_put(key).await.map(Some)
    }

    /// Ends a client's upload of `digest` once the local copy is committed: completes its
    /// streamed upload, or replicates it now; a refusal drops the local copy, as in
    /// [`TieredStore::commit_upload`].
    pub async fn finish_upload(
        &self,
        digest: &Digest,
        streamed: Option<StreamingPut>,
    ) -> Result<(), Error> {
        let Some(put) = streamed else {
            return self.commit_upload(&[*digest], &[*digest]).await;
        };
        let finished = put.finish().await;
        if finished.is_err() {
            self.cas.discard(digest);
        }
        finished
    }

    /// Makes a small object (action result, asset record) durable in the bucket as the
    /// write policy says.
    pub async fn replicate_object(&self, key: Path, body: Bytes) -> Result<(), Error> {
        let Some(tier) = &self.tier else {
            return Ok(());
        };
        if let Some(queue) = &tier.queue {
            let (queue, cas) = (queue.clone(), self.cas.clone());
            let pending = Pending::Object {
                key: key.as_ref().to_string(),
                body: body.clone(),
            };
            if blocking(move || queue.push(&cas, pending)).await? {
                return Ok(());
            }
        }
        tier.remote.put_bytes(&key, body).await
    }
}
