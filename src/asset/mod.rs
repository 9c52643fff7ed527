//! The Remote Asset API's core: resolving URIs (plus qualifiers) to CAS content through the
//! reference store, storing pushed references, and (when allowed) downloading from origin.
//!
//! A reference is served only while everything it names is in the CAS: the blob, or the
//! whole Directory tree, and its referenced blobs and trees. Checking that also pins them,
//! so content a client was just told about stays for the minimum retention time.

pub mod download;
pub mod sri;

use std::time::{Duration, SystemTime};

use crate::config::AssetConfig;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::storage::asset_store::{AssetKey, AssetKind, AssetRecord};
use crate::storage::{AssetStore, TieredStore, tree};

pub use download::Downloader;

/// The qualifier that carries an SRI checksum of a download.
pub const CHECKSUM_SRI: &str = "checksum.sri";

/// Handle to the reference store, the CAS and the downloader; cheap to clone.
#[derive(Clone)]
pub struct Assets {
    store: AssetStore,
    /// The CAS (and the object-store tier, where references are shared with other frontends).
    tiers: TieredStore,
    downloader: Downloader,
}

/// A Fetch or Push request after validation at the edge.
#[derive(Clone, Debug)]
pub struct Query {
    pub instance: String,
    pub kind: AssetKind,
    pub function: DigestFunction,
    /// At least one.
    pub uris: Vec<String>,
    /// Sorted by name, names unique (see [`qualifiers`]).
    pub qualifiers: Vec<(String, String)>,
}

impl Query {
    fn key(&self, uri: &str) -> AssetKey {
        AssetKey {
            instance: self.instance.clone(),
            kind: self.kind,
            function: self.function,
            uri: uri.to_string(),
            qualifiers: self.qualifiers.clone(),
        }
    }

    fn qualifier(&self, name: &str) -> Option<&str> {
        self.qualifiers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks and sorts a request's qualifiers: names must be non-empty and unique.
pub fn qualifiers(
    raw: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, Error> {
    let mut out: Vec<(String, String)> = raw.into_iter().collect();
    out.sort();
    if out.iter().any(|(n, _)| n.is_empty()) {
        return Err(Error::BadInput("a qualifier has an empty name".into()));
    }
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(Error::BadInput(format!(
            "qualifier {:?} is given more than once",
            w[0].0
        )));
    }
    Ok(out)
}

/// A reference that answers a Fetch.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The request URI it was found (or downloaded) under.
    pub uri: String,
    pub record: AssetRecord,
}

/// What a Fetch comes to, short of an error in the request or the server.
#[derive(Debug)]
pub enum Fetched {
    Found(Resolved),
    /// No reference, and fetching from origin failed: reported in the response's `status`.
    Failed {
        uri: String,
        error: std::sync::Arc<Error>,
    },
}

impl Assets {
    /// Opens the reference store under `data_dir`. Blocking.
    pub fn open(
        config: &AssetConfig,
        download_timeout: Duration,
        tiers: TieredStore,
        fsync: bool,
    ) -> Result<Self, Error> {
        let cas = tiers.cas.clone();
        let store = AssetStore::open(cas.data_dir(), fsync)?;
        let downloader = Downloader::new(config, download_timeout, cas, store.clone())?;
        Ok(Assets {
            store,
            tiers,
            downloader,
        })
    }

    pub fn store(&self) -> &AssetStore {
        &self.store
    }

    /// The first URI of `query` with a live reference, inserted no earlier than `oldest`,
    /// whose content is all stored. A reference another frontend pushed is read from the
    /// object-store tier and kept locally.
    pub async fn lookup(
        &self,
        query: &Query,
        oldest: Option<SystemTime>,
    ) -> Result<Option<Resolved>, Error> {
        for uri in &query.uris {
            let key = query.key(uri);
            let record = match self.store.get(&key) {
                Some(record) => Some(record),
                None => self.shared_record(&key).await?,
            };
            let Some(record) = record else {
                continue;
            };
            if oldest.is_some_and(|t| record.inserted_at < t) {
                continue;
            }
            let missing = self.missing_content(query.kind, &record).await?;
            if !missing.is_empty() {
                tracing::debug!(
                    uri,
                    missing = missing.len(),
                    "asset content incomplete; not served"
                );
                continue;
            }
            return Ok(Some(Resolved {
                uri: uri.clone(),
                record,
            }));
        }
        Ok(None)
    }

    /// Stores `record` under every URI of `query`, once all its content is stored
    /// (FAILED_PRECONDITION naming what is missing otherwise), in both tiers.
    pub async fn push(&self, query: &Query, record: AssetRecord) -> Result<(), Error> {
        let missing = self.missing_content(query.kind, &record).await?;
        if !missing.is_empty() {
            return Err(Error::MissingBlobs(missing));
        }
        for uri in &query.uris {
            self.keep(query.key(uri), record.clone()).await?;
        }
        Ok(())
    }

    /// Stores one reference locally and, with an object-store tier, there too.
    async fn keep(&self, key: AssetKey, record: AssetRecord) -> Result<(), Error> {
        if let Some(remote) = self.tiers.remote() {
            let name = remote.keys.asset(&AssetStore::name_of(&key));
            let body = AssetStore::encode(&key, &record)?;
            self.tiers.replicate_object(name, body.into()).await?;
        }
        let store = self.store.clone();
        crate::offload::blocking(move || store.put(key, record)).await
    }

    /// A live reference another frontend stored in the object-store tier, kept locally.
    async fn shared_record(&self, key: &AssetKey) -> Result<Option<AssetRecord>, Error> {
        let Some(remote) = self.tiers.remote() else {
            return Ok(None);
        };
        let name = remote.keys.asset(&AssetStore::name_of(key));
        let data = match remote.get_bytes(&name).await {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::debug!(uri = %key.uri, error = %e, "cannot read shared asset references; a miss");
                return Ok(None);
            }
        };
        let Some(record) = AssetStore::decode(key, &data) else {
            tracing::warn!(uri = %key.uri, object = %name, "shared asset reference does not decode or names another key; ignoring it");
            return Ok(None);
        };
        if record.is_expired(SystemTime::now()) {
            return Ok(None);
        }
        let (store, k, r) = (self.store.clone(), key.clone(), record.clone());
        crate::offload::blocking(move || store.put(k, r)).await?;
        Ok(Some(record))
    }

    /// Resolves `query` from the references, else (blobs only, when allowed) by downloading
    /// its http(s) URIs in turn. A miss with nothing to download is NOT_FOUND.
    pub async fn fetch(
        &self,
        query: Query,
        oldest: Option<SystemTime>,
        timeout: Option<Duration>,
    ) -> Result<Fetched, Error> {
        let started = SystemTime::now();
        if let Some(found) = self.lookup(&query, oldest).await? {
            return Ok(Fetched::Found(found));
        }
        let what = match query.kind {
            AssetKind::Blob => "blob",
            AssetKind::Directory => "directory",
        };
        let miss = || {
            Error::Absent(format!(
                "no {what} reference for {} with these qualifiers",
                query.uris.join(", ")
            ))
        };
        if query.kind != AssetKind::Blob || !self.downloader.enabled() {
            return Err(miss());
        }
        let sri = query
            .qualifier(CHECKSUM_SRI)
            .map(sri::Sri::parse)
            .transpose()?;
        let mut last_failure = None;
        for uri in &query.uris {
            let url = match self.downloader.url_of(uri) {
                Ok(Some(url)) => url,
                Ok(None) => continue,
                Err(e) => {
                    last_failure = Some((uri.clone(), std::sync::Arc::new(e)));
                    continue;
                }
            };
            let download = self
                .downloader
                .fetch(query.key(uri), url, sri.clone(), started);
            let result = match timeout {
                Some(t) => tokio::time::timeout(t, download).await.unwrap_or_else(|_| {
                    Err(std::sync::Arc::new(Error::TimedOut(format!(
                        "downloading {uri} took longer than the request's timeout of {t:?}"
                    ))))
                }),
                None => download.await,
            };
            match result {
                Ok(record) => {
                    // A download is shared like a push: its blob and its reference.
                    if self.tiers.remote().is_some() {
                        self.tiers.replicate(&[record.digest]).await?;
                        self.keep(query.key(uri), record.clone()).await?;
                    }
                    return Ok(Fetched::Found(Resolved {
                        uri: uri.clone(),
                        record,
                    }));
                }
                Err(error) => last_failure = Some((uri.clone(), error)),
            }
        }
        match last_failure {
            Some((uri, error)) => Ok(Fetched::Failed { uri, error }),
            None => Err(Error::Absent(format!(
                "{}; rexd downloads only http and https URIs",
                miss()
            ))),
        }
    }

    /// Everything `record` names that neither tier holds (the blob, or every Directory and
    /// file of the tree, plus its referenced blobs and trees). Present content is pinned.
    async fn missing_content(
        &self,
        kind: AssetKind,
        record: &AssetRecord,
    ) -> Result<Vec<Digest>, Error> {
        if self.tiers.remote().is_some() {
            let trees = record.referenced_directories.iter();
            let roots = trees.chain((kind == AssetKind::Directory).then_some(&record.digest));
            for root in roots {
                self.tiers.prefetch_tree(root, false).await?;
            }
        }
        let (this, record2) = (self.clone(), record.clone());
        let locally =
            crate::offload::blocking(move || this.missing_locally(kind, &record2)).await?;
        if self.tiers.remote().is_none() {
            return Ok(locally);
        }
        Ok(self.tiers.find_missing(&locally).await)
    }

    fn missing_locally(&self, kind: AssetKind, record: &AssetRecord) -> Result<Vec<Digest>, Error> {
        let cas = &self.tiers.cas;
        let mut missing = Vec::new();
        let mut trees: Vec<&Digest> = record.referenced_directories.iter().collect();
        match kind {
            AssetKind::Blob => missing.extend(cas.find_missing([&record.digest])),
            AssetKind::Directory => trees.push(&record.digest),
        }
        missing.extend(cas.find_missing(&record.referenced_blobs));
        for root in trees {
            let absent = tree::missing_in_directory_tree(cas, root)?;
            if !absent.contains(root) {
                cas.pin([root]);
            }
            missing.extend(absent);
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifiers_sorted_and_unique() {
        let q = |pairs: &[(&str, &str)]| {
            qualifiers(pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())))
        };
        assert_eq!(
            q(&[("b", "2"), ("a", "1")]).unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert!(q(&[("a", "1"), ("a", "2")]).is_err());
        assert!(q(&[("", "1")]).is_err());
    }
}
