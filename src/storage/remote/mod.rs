//! The object-store tier behind the local disk: an S3-compatible bucket reached through the
//! `object_store` crate. This module is the client: keys ([`keys`]), what is known to be in
//! the bucket ([`known`]), every request counted and timed, and whether the store answers.
//! Filling the local disk from it is [`fetch`], the write-back queue [`write_back`], expiry
//! and refresh [`sweep`]; [`crate::storage::tiered`] puts the tiers together.

pub mod fetch;
pub mod keys;
pub mod known;
pub mod sweep;
pub mod upload;
pub mod write_back;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig};
use tokio::sync::watch;

use crate::config::RemoteConfig;
use crate::error::Error;
use keys::Keys;
use known::KnownObjects;

pub struct Remote {
    store: Arc<dyn ObjectStore>,
    pub keys: Keys,
    pub known: KnownObjects,
    pub config: RemoteConfig,
    /// Whether the last request reached the store; health and `/healthz` show it.
    reachable: AtomicBool,
    reachable_tx: watch::Sender<bool>,
    pub fetches: fetch::InFlight,
    /// Requests sent, by kind: the Prometheus counters are process-wide, these are this
    /// client's own (tests count with them).
    pub requests: [AtomicU64; Op::COUNT],
    /// Turns of the multipart uploads, which hold parts in memory.
    large_puts: Arc<tokio::sync::Semaphore>,
}

/// Which request a metric counts; a fixed list, so the label set is bounded.
#[derive(Clone, Copy)]
pub enum Op {
    Head,
    Get,
    Put,
    Copy,
    List,
    Delete,
}

impl Op {
    pub const COUNT: usize = 6;

    fn label(self) -> &'static str {
        match self {
            Op::Head => "head",
            Op::Get => "get",
            Op::Put => "put",
            Op::Copy => "copy",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

impl Remote {
    /// Builds the client; it connects lazily, so an unreachable store does not stop start-up.
    pub fn open(config: &RemoteConfig) -> Result<Arc<Remote>, Error> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            // Bodies are not hashed into the signature: every blob is checked against its
            // digest when it comes back, which a payload hash would only repeat (at a
            // SHA-256 pass on both ends of every upload).
            .with_unsigned_payload(true)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(config.request_timeout())
                    .with_connect_timeout(config.connect_timeout())
                    .with_allow_http(true),
            )
            .with_retry(RetryConfig {
                max_retries: config.max_retries,
                retry_timeout: config.request_timeout() * (config.max_retries as u32 + 1),
                ..Default::default()
            });
        if let Some(endpoint) = &config.endpoint {
            // Self-hosted stores answer on path-style URLs; virtual hosts need DNS per bucket.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let credentials = config
            .read_credentials()
            .map_err(|e| Error::BadInput(e.to_string()))?;
        if let Some(creds) = credentials {
            builder = builder
                .with_access_key_id(creds.access_key_id)
                .with_secret_access_key(creds.secret_access_key);
            if let Some(token) = creds.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder
            .build()
            .map_err(|e| Error::BadInput(format!("[storage.remote]: {e}")))?;
        let (reachable_tx, _) = watch::channel(true);
        Ok(Arc::new(Remote {
            store: Arc::new(store),
            keys: Keys::new(&config.prefix),
            known: KnownObjects::new(config.existence_cache_entries, config.max_age()),
            config: config.clone(),
            reachable: AtomicBool::new(true),
            reachable_tx,
            fetches: fetch::InFlight::default(),
            requests: Default::default(),
            large_puts: Arc::new(tokio::sync::Semaphore::new(upload::MAX_LARGE_PUTS)),
        }))
    }

    /// Whether the store answered the last request.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Changes of [`Remote::is_reachable`], for the health service.
    pub fn watch_reachable(&self) -> watch::Receiver<bool> {
        self.reachable_tx.subscribe()
    }

    /// Counts and times one request, and notes whether the store answered: any reply,
    /// NotFound included, means it is up.
    pub(super) fn observe<T>(
        &self,
        op: Op,
        started: Instant,
        result: Result<T, object_store::Error>,
    ) -> Result<T, object_store::Error> {
        let answered = matches!(
            &result,
            Ok(_)
                | Err(object_store::Error::NotFound { .. })
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. })
        );
        let outcome = match &result {
            Ok(_) => "ok",
            Err(object_store::Error::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        metrics::counter!("rexd_remote_requests_total", "op" => op.label(), "outcome" => outcome)
            .increment(1);
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("rexd_remote_request_seconds", "op" => op.label())
            .record(started.elapsed().as_secs_f64());
        if self.reachable.swap(answered, Ordering::Relaxed) != answered {
            if answered {
                tracing::info!(bucket = %self.config.bucket, "object store reachable again");
            } else if let Err(e) = &result {
                tracing::warn!(bucket = %self.config.bucket, error = %e, "object store unreachable; serving from the local disk");
            }
            self.reachable_tx.send_replace(answered);
        }
        result
    }

    /// The object's last-modified time, or `None` if it is not in the bucket.
    pub async fn head(&self, key: &Path) -> Result<Option<SystemTime>, Error> {
        let started = Instant::now();
        match self.observe(Op::Head, started, self.store.head(key).await) {
            Ok(meta) => {
                let modified: SystemTime = meta.last_modified.into();
                self.known.record(key.as_ref(), modified);
                Ok(Some(modified))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.known.forget(key.as_ref());
                Ok(None)
            }
            Err(e) => Err(unavailable("HEAD", key, e)),
        }
    }

    /// A whole small object (an action result, an asset record), or `None`.
    pub async fn get_bytes(&self, key: &Path) -> Result<Option<Bytes>, Error> {
        let Some(mut stream) = self.get_stream(key, None).await? else {
            return Ok(None);
        };
        let mut data = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?);
        }
        Ok(Some(data.freeze()))
    }

    /// Streams an object, or the byte range `range` of it; `None` if it is not in the bucket.
    pub async fn get_stream(
        &self,
        key: &Path,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, Error>>>, Error> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let started = Instant::now();
        let result = match self.observe(Op::Get, started, self.store.get_opts(key, options).await) {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                self.known.forget(key.as_ref());
                return Ok(None);
            }
            Err(e) => return Err(unavailable("GET", key, e)),
        };
        self.known
            .record(key.as_ref(), result.meta.last_modified.into());
        let key = key.clone();
        Ok(Some(
            result
                .into_stream()
                .map(move |chunk| {
                    let chunk = chunk.map_err(|e| unavailable("reading", &key, e))?;
                    metrics::counter!("rexd_remote_bytes_total", "direction" => "in")
                        .increment(chunk.len() as u64);
                    Ok(chunk)
                })
                .boxed(),
        ))
    }

    /// Writes a small object whole.
    pub async fn put_bytes(&self, key: &Path, data: Bytes) -> Result<(), Error> {
        let len = data.len() as u64;
        let started = Instant::now();
        self.observe(
            Op::Put,
            started,
            self.store.put(key, PutPayload::from(data)).await,
        )
        .map_err(|e| unavailable("PUT", key, e))?;
        metrics::counter!("rexd_remote_bytes_total", "direction" => "out").increment(len);
        self.known.record(key.as_ref(), SystemTime::now());
        Ok(())
    }

    /// Uploads a local file: in one PUT when small, else as a multipart upload read from
    /// disk part by part.
    pub async fn put_file(
        self: &Arc<Self>,
        key: &Path,
        path: &std::path::Path,
        size: u64,
    ) -> Result<(), Error> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(format!("opening {} to upload it", path.display()), e))?;
        let read_error = |e| Error::io(format!("reading {}", path.display()), e);
        if size <= upload::PART_SIZE as u64 {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).await.map_err(read_error)?;
            return self.put_bytes(key, Bytes::from(data)).await;
        }
        let mut put = self.begin_put(key.clone()).await?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    put.abort().await;
                    return Err(read_error(e));
                }
            };
            if let Err(e) = put.write(&buf[..n]).await {
                put.abort().await;
                return Err(e);
            }
        }
        put.finish().await
    }

    /// Copies an object onto itself, which resets its last-modified time and so its age.
    pub async fn copy_onto_itself(&self, key: &Path) -> Result<(), Error> {
        let started = Instant::now();
        self.observe(Op::Copy, started, self.store.copy(key, key).await)
            .map_err(|e| unavailable("refreshing", key, e))?;
        self.known.record(key.as_ref(), SystemTime::now());
        Ok(())
    }

    pub async fn delete(&self, key: &Path) -> Result<(), Error> {
        let started = Instant::now();
        self.known.forget(key.as_ref());
        match self.observe(Op::Delete, started, self.store.delete(key).await) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable("DELETE", key, e)),
        }
    }

    /// Up to `limit` objects under the prefix last modified before `cutoff`, listed page
    /// by page; a sweep takes the rest next time.
    pub async fn older_than(&self, cutoff: SystemTime, limit: usize) -> Result<Vec<Path>, Error> {
        let started = Instant::now();
        let mut listing = self.store.list(Some(self.keys.root()));
        let mut expired = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    let e = self
                        .observe(Op::List, started, Err::<(), _>(e))
                        .unwrap_err();
                    return Err(Error::Io(format!("listing the object store: {e}")));
                }
            };
            if SystemTime::from(meta.last_modified) < cutoff {
                expired.push(meta.location);
                if expired.len() >= limit {
                    break;
                }
            }
        }
        let _ = self.observe(Op::List, started, Ok(()));
        Ok(expired)
    }

    /// Requests of kind `op` this client sent.
    pub fn sent(&self, op: Op) -> u64 {
        self.requests[op as usize].load(Ordering::Relaxed)
    }

    /// Asks the store whether it answers at all, updating [`Remote::is_reachable`].
    pub async fn probe(&self) -> bool {
        self.head(&self.keys.probe()).await.is_ok()
    }
}

/// A request the store did not answer, or answered with an error: UNAVAILABLE, naming it.
pub(super) fn unavailable(what: &str, key: &Path, e: object_store::Error) -> Error {
    Error::Io(format!("object store {what} {key}: {e}"))
}
