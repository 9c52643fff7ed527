//! Downloads from origin for FetchBlob: an http(s) URI is streamed into a temp file while its
//! `checksum.sri` hash is computed, checked, adopted into the CAS and recorded as a reference.
//!
//! Concurrent fetches of the same reference share one download: the first starts a task and
//! publishes a shared future of its result; later ones await that. The task runs to the end
//! (and records the reference) even if every client waiting for it goes away.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use reqwest::{StatusCode, Url};

use crate::asset::sri::Sri;
use crate::config::AssetConfig;
use crate::error::Error;
use crate::offload::blocking;
use crate::storage::asset_store::{AssetKey, AssetRecord};
use crate::storage::{AssetStore, Cas};

/// What a download resolves to; the error is shared by every client that waited for it.
pub type DownloadResult = Result<AssetRecord, Arc<Error>>;

type Flight = Shared<BoxFuture<'static, DownloadResult>>;

/// Sent to origin servers.
const USER_AGENT: &str = concat!("rexd/", env!("CARGO_PKG_VERSION"));
/// Most redirects followed for one download.
const MAX_REDIRECTS: usize = 10;

/// Handle to the downloader; cheap to clone.
#[derive(Clone)]
pub struct Downloader {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when downloads are off.
    client: Option<reqwest::Client>,
    allowed_hosts: Arc<Vec<String>>,
    max_size: u64,
    cas: Cas,
    store: AssetStore,

    // A std Mutex: held only to look up, insert or remove a flight; never across an await.
    flights: Mutex<HashMap<AssetKey, Flight>>,
}

impl Downloader {
    pub fn new(
        config: &AssetConfig,
        timeout: Duration,
        cas: Cas,
        store: AssetStore,
    ) -> Result<Self, Error> {
        let allowed_hosts: Arc<Vec<String>> = Arc::new(
            config
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        );
        let client = if config.allow_downloads {
            let hosts = allowed_hosts.clone();
            let redirects = reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else if let Err(e) = check_url(&hosts, attempt.url()) {
                    attempt.error(e.to_string())
                } else {
                    attempt.follow()
                }
            });
            let client = reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .redirect(redirects)
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(30)))
                .build()
                .map_err(|e| Error::Bug(format!("building the HTTP client: {e}")))?;
            Some(client)
        } else {
            None
        };
        Ok(Downloader {
            inner: Arc::new(Inner {
                client,
                allowed_hosts,
                max_size: config.max_download_size.as_u64(),
                cas,
                store,
                flights: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether FetchBlob may download at all.
    pub fn enabled(&self) -> bool {
        self.inner.client.is_some()
    }

    /// The URL to download `uri` from: `Ok(None)` for a scheme rexd does not download
    /// (e.g. a `urn:` only ever pushed), PERMISSION_DENIED for a host not allowed.
    pub fn url_of(&self, uri: &str) -> Result<Option<Url>, Error> {
        let Ok(url) = Url::parse(uri) else {
            return Ok(None);
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Ok(None);
        }
        check_url(&self.inner.allowed_hosts, &url)?;
        Ok(Some(url))
    }

    /// The record of `key` (whose URI is `url`), downloading it unless a download of it is
    /// already under way or one finished after `fresh_since`.
    pub async fn fetch(
        &self,
        key: AssetKey,
        url: Url,
        sri: Option<Sri>,
        fresh_since: SystemTime,
    ) -> DownloadResult {
        let flight = {
            let mut flights = self.inner.flights.lock().expect("flight map poisoned");
            if let Some(flight) = flights.get(&key) {
                flight.clone()
            } else if let Some(record) = self
                .inner
                .store
                .get(&key)
                .filter(|r| r.inserted_at >= fresh_since && self.inner.cas.contains(&r.digest))
            {
                // A download finished between the caller's lookup and now.
                return Ok(record);
            } else {
                let flight = self.start(key.clone(), url, sri);
                flights.insert(key, flight.clone());
                flight
            }
        };
        flight.await
    }

    fn start(&self, key: AssetKey, url: Url, sri: Option<Sri>) -> Flight {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = inner.download(&key, url, sri).await;
            match &result {
                Ok(record) => tracing::info!(
                    uri = %key.uri,
                    digest = %record.digest,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "downloaded"
                ),
                Err(e) => tracing::info!(uri = %key.uri, error = %e, "download failed"),
            }
            inner
                .flights
                .lock()
                .expect("flight map poisoned")
                .remove(&key);
            result.map_err(Arc::new)
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::new(Error::Bug(format!("download task: {e}")))))
        }
        .boxed()
        .shared()
    }
}

impl Inner {
    /// Downloads `url` into the CAS, checks it against `sri` and records it under `key`.
    async fn download(
        &self,
        key: &AssetKey,
        url: Url,
        sri: Option<Sri>,
    ) -> Result<AssetRecord, Error> {
        let client = self.client.as_ref().expect("downloads are enabled");
        let uri = key.uri.clone();
        let mut response = client
            .get(url)
            .send()
            .await
            .map_err(|e| http_error(&uri, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(&uri, status));
        }
        if let Some(len) = response.content_length() {
            self.check_size(&uri, len)?;
        }

        // The body goes to a blocking task that writes it into the CAS, hashing it there for
        // the CAS digest and here for the checksum, so neither the disk nor the hashing runs on
        // the async threads and the body is read once.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let cas = self.cas.clone();
        let function = key.function;
        let hasher = sri.as_ref().map(|s| s.algorithm.hasher());
        let sink = tokio::task::spawn_blocking(move || {
            let mut writer = cas.content_writer(function)?;
            let mut hasher = hasher;
            while let Some(chunk) = rx.blocking_recv() {
                writer
                    .write_all(&chunk)
                    .map_err(|e| Error::io("writing a download", e))?;
                if let Some(h) = &mut hasher {
                    h.update(&chunk);
                }
            }
            Ok::<_, Error>((writer, hasher.map(|h| h.finish())))
        });
        let mut received = 0u64;
        let pumped: Result<(), Error> = async {
            while let Some(chunk) = response.chunk().await.map_err(|e| http_error(&uri, e))? {
                received += chunk.len() as u64;
                self.check_size(&uri, received)?;
                if tx.send(chunk).await.is_err() {
                    break; // The sink failed; its error is reported below.
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let sunk = sink
            .await
            .map_err(|e| Error::Bug(format!("download writer: {e}")))?;
        pumped?;
        let (writer, actual) = sunk?;
        if let (Some(sri), Some(actual)) = (&sri, actual) {
            sri.check(&uri, &actual)?;
        }
        // Only checked content reaches the CAS.
        let cas = self.cas.clone();
        let digest = blocking(move || {
            let digest = writer.commit()?;
            cas.pin([&digest]);
            Ok(digest)
        })
        .await?;
        let record = AssetRecord {
            digest,
            inserted_at: SystemTime::now(),
            expire_at: None,
            referenced_blobs: Vec::new(),
            referenced_directories: Vec::new(),
        };
        let store = self.store.clone();
        let (k, r) = (key.clone(), record.clone());
        blocking(move || store.put(k, r)).await?;
        Ok(record)
    }

    fn check_size(&self, uri: &str, size: u64) -> Result<(), Error> {
        if size > self.max_size {
            return Err(Error::OverLimit(format!(
                "{uri} is larger than asset.max_download_size ({} bytes)",
                self.max_size
            )));
        }
        Ok(())
    }
}

/// PERMISSION_DENIED unless `url`'s host is allowed (an empty list allows any).
fn check_url(allowed_hosts: &[String], url: &Url) -> Result<(), Error> {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if allowed_hosts.is_empty() || allowed_hosts.contains(&host) {
        return Ok(());
    }
    Err(Error::Denied(format!(
        "downloads from host {host:?} are not allowed (asset.allowed_hosts: {})",
        allowed_hosts.join(", ")
    )))
}

fn status_error(uri: &str, status: StatusCode) -> Error {
    let msg = format!("downloading {uri}: the server answered HTTP {status}");
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => Error::Absent(msg),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Denied(msg),
        StatusCode::TOO_MANY_REQUESTS => Error::OverLimit(msg),
        _ => Error::Upstream(msg),
    }
}

fn http_error(uri: &str, err: reqwest::Error) -> Error {
    // The chain holds the useful part ("connection refused", the redirect policy's reason).
    let mut msg = format!("downloading {uri}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        msg.push_str(&format!(": {e}"));
        source = e.source();
    }
    if err.is_timeout() {
        Error::TimedOut(msg)
    } else if err.is_redirect() && msg.contains("not allowed") {
        Error::Denied(msg)
    } else {
        Error::Upstream(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_allow_list() {
        let url = |s: &str| Url::parse(s).unwrap();
        check_url(&[], &url("https://any.example/x")).unwrap();
        let hosts = vec!["github.com".to_string(), "127.0.0.1".to_string()];
        check_url(&hosts, &url("https://GitHub.com/x")).unwrap();
        check_url(&hosts, &url("http://127.0.0.1:8080/x")).unwrap();
        let err = check_url(&hosts, &url("https://evil.example/x")).unwrap_err();
        assert!(matches!(err, Error::Denied(_)), "{err}");
        assert!(err.to_string().contains("evil.example"), "{err}");
    }
}
