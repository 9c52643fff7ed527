//! The on-disk content-addressed store.
//!
//! Layout under the data directory:
//! - `cas/{function}/{hh}/{hash}-{size}`: one read-only file per blob, sharded by the first
//!   two hex digits of the hash. The size in the name lets start-up rebuild the index from
//!   directory listings alone.
//! - `tmp/`: uploads in progress. A blob is written there while being hashed, checked against
//!   its digest, then renamed into place, so no partial blob ever carries a real name.
//!   Leftovers from a crash are removed at start-up.
//!
//! This file holds the handle, opening and reads; writes are in [`super::blob_writer`],
//! eviction and the saved use order in [`super::eviction`]. All methods here block; async
//! callers run them on the blocking pool (or use [`Cas::is_present`]).

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::storage::disk::{self, hash_file};
use crate::storage::eviction;
use crate::storage::index::Index;
use crate::storage::layout;
use crate::storage::stats::CasStats;
use crate::storage::{ensure_dir, ensure_private_dir};

/// Handle to the blob store; cheap to clone.
#[derive(Clone)]
pub struct Cas {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) data_dir: PathBuf,
    pub(super) blobs_dir: PathBuf,
    pub(super) tmp_dir: PathBuf,
    pub(super) index: Index,
    pub(super) options: CasOptions,
    pub(super) stats: CasStats,
    /// Set while one thread evicts, so concurrent writers do not all evict at once.
    pub(super) evicting: AtomicBool,
}

/// Store policy, from the `[storage]` configuration.
#[derive(Clone, Debug)]
pub struct CasOptions {
    /// fsync each blob before it becomes visible.
    pub fsync: bool,
    /// Disk budget in bytes; 0 means unbounded.
    pub max_size: u64,
    /// Eviction brings the store down to this many bytes.
    pub low_water: u64,
    /// How long a blob a client was just told about is kept.
    pub min_retention: Duration,
}

impl Default for CasOptions {
    fn default() -> Self {
        CasOptions {
            fsync: false,
            max_size: 0,
            low_water: 0,
            min_retention: Duration::from_secs(3600),
        }
    }
}

/// Blobs are stored read-only, so that nothing handed a hardlink can change them by accident.
pub(super) const BLOB_MODE: u32 = 0o444;
impl Cas {
    /// Opens (creating if needed) the store under `data_dir`, removes crash leftovers and
    /// indexes every blob present, in the use order saved by the last run where known.
    pub fn open(data_dir: &Path, options: CasOptions) -> Result<Cas, Error> {
        let blobs_dir = layout::blobs(data_dir);
        let tmp_dir = layout::tmp(data_dir);
        ensure_private_dir(&tmp_dir)?;
        ensure_private_dir(&blobs_dir)?;
        disk::clean_tmp(&tmp_dir)?;
        let cas = Cas {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                blobs_dir,
                tmp_dir,
                index: Index::default(),
                options,
                stats: CasStats::default(),
                evicting: AtomicBool::new(false),
            }),
        };
        let mut on_disk = HashSet::new();
        for &function in DigestFunction::ALL {
            // Shard directories are made on first use, so only existing ones are listed.
            let dir = cas.function_dir(function);
            ensure_dir(&dir)?;
            let shards = fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            for shard in shards {
                let shard =
                    shard.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
                if shard.file_type().is_ok_and(|t| t.is_dir()) {
                    disk::list_shard(function, &shard.path(), &mut on_disk)?;
                }
            }
        }
        // Saved order first (oldest first), then blobs the saved order does not know, which
        // were written after it was saved and so are the most recent.
        let saved = eviction::read_order(&layout::use_order(data_dir));
        let known: Vec<Digest> = saved.into_iter().filter(|d| on_disk.remove(d)).collect();
        cas.inner.index.load(known);
        cas.inner.index.load(on_disk);
        for &function in DigestFunction::ALL {
            // The empty blob is always present; keep a real file so reads need no special case.
            cas.put(&Digest::empty(function), &[])?;
        }
        cas.maybe_evict();
        Ok(cas)
    }

    fn function_dir(&self, function: DigestFunction) -> PathBuf {
        self.inner.blobs_dir.join(function.name())
    }

    /// Where a blob lives on disk (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hash = digest.hash_hex();
        let mut path = self.function_dir(digest.function());
        path.push(&hash[..2]);
        path.push(format!("{hash}-{}", digest.size()));
        path
    }

    /// The in-memory index (presence, sizes, use order).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    pub fn stats(&self) -> &CasStats {
        &self.inner.stats
    }

    /// The data directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Whether a blob is stored and sound, from async code: answered from the index, except
    /// that a blob found on disk at start-up and not yet checked is hashed once, on the
    /// blocking pool.
    pub async fn is_present(&self, digest: &Digest) -> Result<bool, Error> {
        match self.inner.index.is_verified(digest) {
            None => Ok(false),
            Some(true) => Ok(self.contains(digest)),
            Some(false) => {
                let (cas, digest) = (self.clone(), *digest);
                crate::offload::blocking(move || Ok(cas.contains(&digest))).await
            }
        }
    }

    /// Whether the blob is stored and sound, counting the check as a use. A blob found on
    /// disk at start-up is verified here first (once), so that an upload of one that went bad
    /// is not skipped as "already stored".
    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.index.touch(digest) && self.ensure_verified(digest).unwrap_or(false)
    }

    fn pin_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.options.min_retention)
    }

    /// The digests that are not stored. Present ones count as used and are kept for at least
    /// the minimum retention time, since the caller is about to tell a client they exist.
    pub fn find_missing<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Vec<Digest> {
        let digests: Vec<&Digest> = digests.into_iter().collect();
        let missing = self
            .inner
            .index
            .missing(digests.iter().copied(), self.pin_deadline());
        CasStats::add(&self.inner.stats.misses, missing.len() as u64);
        CasStats::add(
            &self.inner.stats.hits,
            (digests.len() - missing.len()) as u64,
        );
        missing
    }

    /// Keeps present blobs for at least the minimum retention time (outputs just reported).
    pub fn pin<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) {
        self.inner.index.missing(digests, self.pin_deadline());
    }

    /// Keeps the blobs from eviction until the returned guard is dropped.
    pub fn lease(&self, digests: Vec<Digest>) -> Lease {
        self.inner.index.lease(&digests, false);
        Lease {
            cas: self.clone(),
            digests,
        }
    }

    /// Opens a stored blob for reading; `None` if it is not stored or turned out damaged.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<File>, Error> {
        if !self.inner.index.touch(digest) || !self.ensure_verified(digest)? {
            CasStats::add(&self.inner.stats.misses, 1);
            return Ok(None);
        }
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(file) => {
                CasStats::add(&self.inner.stats.hits, 1);
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed behind our back: forget it rather than fail every later read.
                tracing::warn!(%digest, "blob vanished from disk; dropping it from the index");
                self.inner.index.remove(digest);
                CasStats::add(&self.inner.stats.misses, 1);
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("opening blob {digest}"), e)),
        }
    }

    /// Checks, once per process lifetime, that a blob found on disk at start-up still hashes
    /// to its name; a damaged one is removed. Returns whether the blob is present and sound.
    pub fn ensure_verified(&self, digest: &Digest) -> Result<bool, Error> {
        match self.inner.index.is_verified(digest) {
            None => return Ok(false),
            Some(true) => return Ok(true),
            Some(false) => {}
        }
        let path = self.blob_path(digest);
        let actual = match hash_file(&path, digest.function()) {
            Ok(actual) => actual,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.inner.index.remove(digest);
                return Ok(false);
            }
            Err(e) => return Err(Error::io(format!("verifying blob {digest}"), e)),
        };
        if actual != *digest {
            self.report_corrupt(digest, &actual);
            return Ok(false);
        }
        self.inner.index.mark_verified(digest);
        Ok(true)
    }

    pub(super) fn report_corrupt(&self, digest: &Digest, actual: &Digest) {
        tracing::error!(%digest, %actual, "stored blob does not match its digest; removing it");
        CasStats::add(&self.inner.stats.corrupt, 1);
        self.discard(digest);
    }

    /// Reads a whole blob into memory, checking its hash; for small blobs (batch reads,
    /// protos). A damaged blob is removed and reported absent.
    pub fn read(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        let Some(mut file) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(digest.size() as usize);
        file.read_to_end(&mut data)
            .map_err(|e| Error::io(format!("reading blob {digest}"), e))?;
        let actual = Digest::of(digest.function(), &data);
        if actual != *digest {
            self.report_corrupt(digest, &actual);
            return Ok(None);
        }
        CasStats::add(&self.inner.stats.bytes_out, data.len() as u64);
        Ok(Some(Bytes::from(data)))
    }

    /// Removes a blob that turned out to be damaged, so it is reported missing from now on.
    pub fn discard(&self, digest: &Digest) {
        self.inner.index.remove(digest);
        let _ = fs::remove_file(self.blob_path(digest));
    }
}

/// Holds blobs in the CAS (no eviction) while alive.
pub struct Lease {
    cas: Cas,
    digests: Vec<Digest>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.cas.inner.index.lease(&self.digests, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn sha(data: &[u8]) -> Digest {
        Digest::of(DigestFunction::Sha256, data)
    }

    #[test]
    fn put_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), CasOptions::default()).unwrap();
        let d = sha(b"hello");
        assert!(!cas.contains(&d));
        cas.put(&d, b"hello").unwrap();
        assert_eq!(cas.read(&d).unwrap().unwrap(), Bytes::from_static(b"hello"));
        let mode = fs::metadata(cas.blob_path(&d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, BLOB_MODE);

        // A leftover upload and a complete blob; reopening keeps one and drops the other.
        fs::write(dir.path().join("tmp/upload-crashed"), b"partial").unwrap();
        drop(cas);
        let cas = Cas::open(dir.path(), CasOptions::default()).unwrap();
        assert!(cas.contains(&d));
        assert!(cas.contains(&Digest::empty(DigestFunction::Sha256)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn put_rejects_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), CasOptions::default()).unwrap();
        let d = sha(b"hello");
        assert!(matches!(cas.put(&d, b"hellO"), Err(Error::BadInput(_))));
        assert!(!cas.contains(&d));
    }

    #[test]
    fn streamed_writer_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(
            dir.path(),
            CasOptions {
                fsync: true,
                ..Default::default()
            },
        )
        .unwrap();
        let d = sha(b"hello world");
        let mut w = cas.writer(&d).unwrap();
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        assert!(w.write_all(b"!").is_err(), "writing past the size fails");
        w.commit().unwrap();
        assert!(cas.contains(&d));

        let d2 = sha(b"abc");
        let mut w = cas.writer(&d2).unwrap();
        w.write_all(b"abd").unwrap();
        assert!(w.commit().is_err());
        assert!(!cas.contains(&d2));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        let mut w = cas.writer(&d2).unwrap();
        w.write_all(b"ab").unwrap();
        assert!(w.commit().is_err(), "short upload fails");
    }
}
