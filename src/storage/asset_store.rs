//! Remote Asset references: what a URI (plus qualifiers) resolves to, persisted per instance.
//!
//! Layout: `assets/{hh}/{key}.toml`, one small TOML record per reference, where `{key}` is the
//! SHA-256 of the reference's identity (instance, kind, digest function, URI and sorted
//! qualifiers) and `{hh}` its first two hex digits. Records are replaced atomically and all
//! loaded into memory at start-up; expired and unreadable ones are removed then.
//!
//! The store only keeps references; whether their content is still in the CAS is checked by
//! the caller each time one is served.
//!
//! All methods here block; async callers run them on the blocking pool.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::storage::layout;
use crate::storage::{ensure_dir, ensure_private_dir, write_atomic};

/// What a reference points at: FetchBlob and FetchDirectory answer from separate namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    Blob,
    Directory,
}

/// The identity of a reference; a Fetch matches only on all of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AssetKey {
    pub instance: String,
    pub kind: AssetKind,
    pub function: DigestFunction,
    pub uri: String,
    /// Sorted by name; names are unique (checked at the edge).
    pub qualifiers: Vec<(String, String)>,
}

impl AssetKey {
    /// Hex SHA-256 of a length-prefixed encoding of every field, so no two keys share it.
    fn file_stem(&self) -> String {
        let mut h = sha2::Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field(&self.instance);
        field(match self.kind {
            AssetKind::Blob => "blob",
            AssetKind::Directory => "directory",
        });
        field(self.function.name());
        field(&self.uri);
        for (name, value) in &self.qualifiers {
            field(name);
            field(value);
        }
        hex::encode(h.finalize())
    }
}

/// What a reference resolves to, and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct AssetRecord {
    /// The blob, or the root Directory, in the CAS.
    pub digest: Digest,
    /// When it was pushed or downloaded (`oldest_content_accepted` compares with this).
    pub inserted_at: SystemTime,
    /// Absent from this instant on; `None` means no expiry.
    pub expire_at: Option<SystemTime>,
    /// Further content the reference needs, checked along with `digest`.
    pub referenced_blobs: Vec<Digest>,
    pub referenced_directories: Vec<Digest>,
}

impl AssetRecord {
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expire_at.is_some_and(|t| t <= now)
    }
}

/// Handle to the reference store; cheap to clone.
#[derive(Clone)]
pub struct AssetStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
    // A std Mutex: lookups and inserts are map operations; nothing awaits under it and the
    // file write happens before the lock is taken.
    map: Mutex<HashMap<AssetKey, AssetRecord>>,
}

impl AssetStore {
    /// Opens (creating if needed) the store under `data_dir` and loads every live reference.
    pub fn open(data_dir: &Path, fsync: bool) -> Result<Self, Error> {
        let root = layout::assets(data_dir);
        let tmp_dir = layout::tmp(data_dir);
        ensure_private_dir(&root)?;
        ensure_dir(&tmp_dir)?;
        let map = load_all(&root, SystemTime::now())?;
        Ok(AssetStore {
            inner: Arc::new(Inner {
                root,
                tmp_dir,
                fsync,
                map: Mutex::new(map),
            }),
        })
    }

    fn path(&self, key: &AssetKey) -> PathBuf {
        let stem = key.file_stem();
        self.inner
            .root
            .join(&stem[..2])
            .join(format!("{stem}.toml"))
    }

    /// The live (unexpired) record of `key`, from memory.
    pub fn get(&self, key: &AssetKey) -> Option<AssetRecord> {
        let map = self.inner.map.lock().expect("asset map poisoned");
        map.get(key)
            .filter(|r| !r.is_expired(SystemTime::now()))
            .cloned()
    }

    /// Stores (or replaces) a reference: on disk first, then in memory.
    pub fn put(&self, key: AssetKey, record: AssetRecord) -> Result<(), Error> {
        let path = self.path(&key);
        let parent = path.parent().expect("record paths have a parent");
        if !parent.exists() {
            ensure_dir(parent)?;
        }
        let text = Self::encode(&key, &record)?;
        write_atomic(&self.inner.tmp_dir, &path, &text, self.inner.fsync)?;
        self.inner
            .map
            .lock()
            .expect("asset map poisoned")
            .insert(key, record);
        Ok(())
    }

    /// The name a reference goes by outside this store (the object-store tier's key).
    pub fn name_of(key: &AssetKey) -> String {
        key.file_stem()
    }

    /// A reference in the form it is stored in, for another tier to hold.
    pub fn encode(key: &AssetKey, record: &AssetRecord) -> Result<Vec<u8>, Error> {
        toml::to_string(&RecordFile::new(key, record))
            .map(String::into_bytes)
            .map_err(|e| Error::Bug(format!("encoding an asset reference: {e}")))
    }

    /// The record in `data`, if it decodes and is the reference of `key`: a copy from
    /// another tier is believed only for the key it is named after.
    pub fn decode(key: &AssetKey, data: &[u8]) -> Option<AssetRecord> {
        let text = std::str::from_utf8(data).ok()?;
        let (found, record) = toml::from_str::<RecordFile>(text).ok()?.parse()?;
        (found == *key).then_some(record)
    }

    /// Number of references held (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.inner.map.lock().expect("asset map poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key held, for diagnostics and tests.
    pub fn keys(&self) -> Vec<AssetKey> {
        let map = self.inner.map.lock().expect("asset map poisoned");
        map.keys().cloned().collect()
    }
}

/// The on-disk form of one reference. Times are nanoseconds since the Unix epoch.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFile {
    instance: String,
    kind: AssetKind,
    function: String,
    uri: String,
    /// `hash/size`.
    digest: String,
    inserted_at_ns: u64,
    expire_at_ns: Option<u64>,
    qualifiers: Vec<(String, String)>,
    referenced_blobs: Vec<String>,
    referenced_directories: Vec<String>,
}

impl RecordFile {
    fn new(key: &AssetKey, record: &AssetRecord) -> Self {
        let names = |ds: &[Digest]| ds.iter().map(|d| d.to_string()).collect();
        RecordFile {
            instance: key.instance.clone(),
            kind: key.kind,
            function: key.function.name().to_string(),
            uri: key.uri.clone(),
            digest: record.digest.to_string(),
            inserted_at_ns: nanos(record.inserted_at),
            expire_at_ns: record.expire_at.map(nanos),
            qualifiers: key.qualifiers.clone(),
            referenced_blobs: names(&record.referenced_blobs),
            referenced_directories: names(&record.referenced_directories),
        }
    }

    fn parse(self) -> Option<(AssetKey, AssetRecord)> {
        let function = DigestFunction::from_name(&self.function)?;
        let digest = |s: &str| {
            let (hash, size) = s.split_once('/')?;
            Digest::parse(function, hash, size.parse().ok()?).ok()
        };
        let digests = |ss: &[String]| ss.iter().map(|s| digest(s)).collect::<Option<Vec<_>>>();
        let record = AssetRecord {
            digest: digest(&self.digest)?,
            inserted_at: UNIX_EPOCH + Duration::from_nanos(self.inserted_at_ns),
            expire_at: self
                .expire_at_ns
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns)),
            referenced_blobs: digests(&self.referenced_blobs)?,
            referenced_directories: digests(&self.referenced_directories)?,
        };
        let key = AssetKey {
            instance: self.instance,
            kind: self.kind,
            function,
            uri: self.uri,
            qualifiers: self.qualifiers,
        };
        Some((key, record))
    }
}

/// Nanoseconds since the epoch, clamped into what a record holds.
fn nanos(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(d.as_nanos())
        .unwrap_or(i64::MAX as u64)
        .min(i64::MAX as u64)
}

/// Reads every record under `root`; expired, unreadable or misplaced ones are removed.
fn load_all(root: &Path, now: SystemTime) -> Result<HashMap<AssetKey, AssetRecord>, Error> {
    let mut map = HashMap::new();
    let list = |dir: &Path| {
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))
    };
    for shard in list(root)? {
        let shard = shard.map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
        if !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in list(&shard.path())? {
            let path = entry
                .map_err(|e| Error::io(format!("listing {}", shard.path().display()), e))?
                .path();
            let parsed = fs::read_to_string(&path)
                .ok()
                .and_then(|text| toml::from_str::<RecordFile>(&text).ok())
                .and_then(RecordFile::parse);
            let keep = match &parsed {
                None => {
                    tracing::warn!(path = %path.display(), "unreadable asset reference; removing it");
                    false
                }
                Some((key, record)) => {
                    let in_place = path.file_stem() == Some(key.file_stem().as_ref());
                    in_place && !record.is_expired(now)
                }
            };
            match parsed {
                Some((key, record)) if keep => {
                    map.insert(key, record);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str, qualifiers: &[(&str, &str)]) -> AssetKey {
        AssetKey {
            instance: "main".into(),
            kind: AssetKind::Blob,
            function: DigestFunction::Sha256,
            uri: uri.into(),
            qualifiers: qualifiers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn record(data: &[u8], expire_at: Option<SystemTime>) -> AssetRecord {
        AssetRecord {
            digest: Digest::of(DigestFunction::Sha256, data),
            inserted_at: SystemTime::now(),
            expire_at,
            referenced_blobs: vec![Digest::of(DigestFunction::Sha256, b"other")],
            referenced_directories: Vec::new(),
        }
    }

    #[test]
    fn keys_differ_in_every_field() {
        let a = key("u", &[("a", "bc")]);
        let b = key("u", &[("ab", "c")]);
        assert_ne!(a.file_stem(), b.file_stem());
        let mut c = a.clone();
        c.kind = AssetKind::Directory;
        assert_ne!(a.file_stem(), c.file_stem());
    }

    #[test]
    fn put_get_reopen_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = AssetStore::open(dir.path(), false).unwrap();
        let live = key("https://example.com/a", &[("checksum.sri", "sha256-x")]);
        let gone = key("https://example.com/b", &[]);
        let past = SystemTime::now() - Duration::from_secs(1);
        store.put(live.clone(), record(b"a", None)).unwrap();
        store.put(gone.clone(), record(b"b", Some(past))).unwrap();
        assert!(store.get(&live).is_some());
        assert!(store.get(&gone).is_none(), "expired is absent");
        assert!(store.get(&key("https://example.com/a", &[])).is_none());

        let reopened = AssetStore::open(dir.path(), false).unwrap();
        assert_eq!(reopened.get(&live), store.get(&live));
        assert_eq!(reopened.len(), 1, "the expired record was dropped");
        assert!(!reopened.path(&gone).exists());
    }

    #[test]
    fn garbage_records_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = AssetStore::open(dir.path(), false).unwrap();
        let k = key("u", &[]);
        store.put(k.clone(), record(b"a", None)).unwrap();
        fs::write(store.path(&k), "not = [valid").unwrap();
        let reopened = AssetStore::open(dir.path(), false).unwrap();
        assert!(reopened.is_empty());
        assert!(!store.path(&k).exists());
    }
}
