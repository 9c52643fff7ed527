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
//! All methods here block; async callers run them on the blocking pool.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction, Hasher};
use crate::error::Error;
use crate::storage::index::Index;
use crate::storage::{ensure_dir, ensure_private_dir};

/// Handle to the blob store; cheap to clone.
#[derive(Clone)]
pub struct Cas {
    inner: Arc<Inner>,
}

struct Inner {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Index,
    fsync: bool,
}

/// Blobs are stored read-only, so that nothing handed a hardlink can change them by accident.
const BLOB_MODE: u32 = 0o444;

impl Cas {
    /// Opens (creating if needed) the store under `data_dir`, removes crash leftovers and
    /// indexes every blob present.
    pub fn open(data_dir: &Path, fsync: bool) -> Result<Cas, Error> {
        let blobs_dir = data_dir.join("cas");
        let tmp_dir = data_dir.join("tmp");
        ensure_private_dir(&tmp_dir)?;
        ensure_private_dir(&blobs_dir)?;
        clean_tmp(&tmp_dir)?;
        let cas = Cas {
            inner: Arc::new(Inner {
                blobs_dir,
                tmp_dir,
                index: Index::default(),
                fsync,
            }),
        };
        for &function in DigestFunction::ALL {
            let dir = cas.function_dir(function);
            for shard in 0..=255u8 {
                let shard_dir = dir.join(format!("{shard:02x}"));
                ensure_dir(&shard_dir)?;
                cas.index_shard(function, &shard_dir)?;
            }
            // The empty blob is always present; keep a real file so reads need no special case.
            cas.put(&Digest::empty(function), &[])?;
        }
        Ok(cas)
    }

    fn function_dir(&self, function: DigestFunction) -> PathBuf {
        self.inner.blobs_dir.join(function.name())
    }

    fn index_shard(&self, function: DigestFunction, shard_dir: &Path) -> Result<(), Error> {
        let entries = fs::read_dir(shard_dir)
            .map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
            let name = entry.file_name();
            match name
                .to_str()
                .and_then(|n| parse_blob_file_name(function, n))
            {
                Some(digest) => self.inner.index.insert(digest),
                None => {
                    tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a blob")
                }
            }
        }
        Ok(())
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

    pub fn contains(&self, digest: &Digest) -> bool {
        self.inner.index.touch(digest)
    }

    /// The digests that are not stored; present ones count as used.
    pub fn find_missing<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Vec<Digest> {
        self.inner.index.missing(digests)
    }

    /// Opens a stored blob for reading; `None` if it is not stored.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<File>, Error> {
        if !self.inner.index.touch(digest) {
            return Ok(None);
        }
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed behind our back: forget it rather than fail every later read.
                tracing::warn!(%digest, "blob vanished from disk; dropping it from the index");
                self.inner.index.remove(digest);
                Ok(None)
            }
            Err(e) => Err(Error::io(format!("opening blob {digest}"), e)),
        }
    }

    /// Reads a whole blob into memory; for small blobs (batch reads, protos).
    pub fn read(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        let Some(mut file) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(digest.size() as usize);
        file.read_to_end(&mut data)
            .map_err(|e| Error::io(format!("reading blob {digest}"), e))?;
        if data.len() as u64 != digest.size() {
            tracing::error!(%digest, actual = data.len(), "stored blob has the wrong size; removing it");
            self.discard(digest);
            return Ok(None);
        }
        Ok(Some(Bytes::from(data)))
    }

    /// Stores `data` under `digest` after checking that it hashes to it.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), Error> {
        let actual = Digest::of(digest.function(), data);
        if actual != *digest {
            return Err(mismatch(digest, &actual));
        }
        if self.inner.index.touch(digest) {
            return Ok(());
        }
        let mut writer = self.writer(digest)?;
        writer
            .file
            .write_all(data)
            .map_err(|e| Error::io(format!("writing blob {digest}"), e))?;
        writer.written = data.len() as u64;
        writer.hasher = None;
        writer.commit()
    }

    /// Starts a streamed write of `digest`; see [`BlobWriter`].
    pub fn writer(&self, digest: &Digest) -> Result<BlobWriter, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .permissions(Permissions::from_mode(BLOB_MODE))
            .tempfile_in(&self.inner.tmp_dir)
            .map_err(|e| Error::io("creating an upload file", e))?;
        Ok(BlobWriter {
            cas: self.clone(),
            expected: *digest,
            hasher: Some(digest.function().hasher()),
            written: 0,
            file: BufWriter::with_capacity(256 * 1024, tmp),
        })
    }

    /// Adds an existing file (an action's output) to the CAS, hashing it, and returns its
    /// digest. The file is hardlinked into place (copied where a link is refused) and made
    /// read-only; it must not change afterwards.
    pub fn adopt_file(&self, path: &Path, function: DigestFunction) -> Result<Digest, Error> {
        let mut file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut hasher = function.hasher();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = hasher.finish(size);
        if self.inner.index.touch(&digest) {
            return Ok(digest);
        }
        if self.inner.fsync {
            file.sync_data()
                .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
        }
        // A file made by an action under another uid stays that uid's to chmod and rewrite;
        // a blob must belong to the server alone.
        let owner = file
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?;
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        if std::os::unix::fs::MetadataExt::uid(&owner) != uid {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("taking ownership of {}", path.display()), e))?;
        }
        fs::set_permissions(path, Permissions::from_mode(BLOB_MODE))
            .map_err(|e| Error::io(format!("making {} read-only", path.display()), e))?;
        let dest = self.blob_path(&digest);
        match fs::hard_link(path, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => {
                // Links refused (another filesystem, link limit): copy through a temp file.
                let tmp = self
                    .inner
                    .tmp_dir
                    .join(format!("adopt-{}", uuid::Uuid::new_v4()));
                fs::copy(path, &tmp)
                    .and_then(|_| fs::rename(&tmp, &dest))
                    .map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        Error::io(format!("storing output {}", path.display()), e)
                    })?;
            }
        }
        self.inner.index.insert(digest);
        Ok(digest)
    }

    /// Removes a blob that turned out to be damaged, so it is reported missing from now on.
    pub fn discard(&self, digest: &Digest) {
        self.inner.index.remove(digest);
        let _ = fs::remove_file(self.blob_path(digest));
    }
}

fn mismatch(expected: &Digest, actual: &Digest) -> Error {
    Error::InvalidArgument(format!(
        "uploaded data does not match its digest: expected {expected}, got {actual}"
    ))
}

fn parse_blob_file_name(function: DigestFunction, name: &str) -> Option<Digest> {
    let (hash, size) = name.split_once('-')?;
    Digest::parse(function, hash, size.parse().ok()?).ok()
}

fn clean_tmp(tmp_dir: &Path) -> Result<(), Error> {
    let entries = fs::read_dir(tmp_dir)
        .map_err(|e| Error::io(format!("listing {}", tmp_dir.display()), e))?;
    let mut removed = 0usize;
    for entry in entries.flatten() {
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover temp file")
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed leftover temp files from an earlier run");
    }
    Ok(())
}

/// A blob being written: bytes are hashed as they arrive and land in a temp file, which
/// becomes visible under the blob's name only if [`BlobWriter::commit`] verifies it.
/// Dropping an uncommitted writer deletes the temp file.
pub struct BlobWriter {
    cas: Cas,
    expected: Digest,
    /// `None` once the data was verified up front (whole-buffer puts).
    hasher: Option<Hasher>,
    written: u64,
    file: BufWriter<tempfile::NamedTempFile>,
}

impl BlobWriter {
    /// Bytes accepted so far; the committed size a resumed upload continues from.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// Verifies size and hash, flushes (and fsyncs if configured), then renames into place.
    pub fn commit(self) -> Result<(), Error> {
        let expected = self.expected;
        if self.written != expected.size() {
            return Err(Error::InvalidArgument(format!(
                "upload of {expected} ended after {} bytes, but the digest says {}",
                self.written,
                expected.size()
            )));
        }
        if let Some(hasher) = self.hasher {
            let actual = hasher.finish(self.written);
            if actual != expected {
                return Err(mismatch(&expected, &actual));
            }
        }
        let tmp = self
            .file
            .into_inner()
            .map_err(|e| Error::io(format!("writing blob {expected}"), e.into_error()))?;
        if self.cas.inner.fsync {
            tmp.as_file()
                .sync_data()
                .map_err(|e| Error::io(format!("syncing blob {expected}"), e))?;
        }
        let dest = self.cas.blob_path(&expected);
        tmp.persist(&dest)
            .map_err(|e| Error::io(format!("storing blob {expected}"), e.error))?;
        self.cas.inner.index.insert(expected);
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.expected.size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "more data than the digest's size of {} bytes",
                    self.expected.size()
                ),
            ));
        }
        let n = self.file.write(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> Digest {
        Digest::of(DigestFunction::Sha256, data)
    }

    #[test]
    fn put_read_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), false).unwrap();
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
        let cas = Cas::open(dir.path(), false).unwrap();
        assert!(cas.contains(&d));
        assert!(cas.contains(&Digest::empty(DigestFunction::Sha256)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn put_rejects_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), false).unwrap();
        let d = sha(b"hello");
        assert!(matches!(
            cas.put(&d, b"hellO"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(!cas.contains(&d));
    }

    #[test]
    fn streamed_writer_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), true).unwrap();
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
