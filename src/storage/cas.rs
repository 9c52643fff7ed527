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

use std::collections::HashSet;
use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction, Hasher};
use crate::error::Error;
use crate::storage::eviction;
use crate::storage::index::Index;
use crate::storage::layout;
use crate::storage::stats::CasStats;
use crate::storage::{ensure_dir, ensure_private_dir};

/// Handle to the blob store; cheap to clone.
#[derive(Clone)]
pub struct Cas {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Index,
    options: CasOptions,
    stats: CasStats,
    /// Set while one thread evicts, so concurrent writers do not all evict at once.
    evicting: AtomicBool,
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
const BLOB_MODE: u32 = 0o444;
/// The saved use order of the index, read at start-up.

impl Cas {
    /// Opens (creating if needed) the store under `data_dir`, removes crash leftovers and
    /// indexes every blob present, in the use order saved by the last run where known.
    pub fn open(data_dir: &Path, options: CasOptions) -> Result<Cas, Error> {
        let blobs_dir = layout::blobs(data_dir);
        let tmp_dir = layout::tmp(data_dir);
        ensure_private_dir(&tmp_dir)?;
        ensure_private_dir(&blobs_dir)?;
        clean_tmp(&tmp_dir)?;
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
                    list_shard(function, &shard.path(), &mut on_disk)?;
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

    pub fn options(&self) -> &CasOptions {
        &self.inner.options
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

    fn report_corrupt(&self, digest: &Digest, actual: &Digest) {
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

    /// Stores `data` under `digest` after checking that it hashes to it.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), Error> {
        let actual = Digest::of(digest.function(), data);
        if actual != *digest {
            return Err(mismatch(digest, &actual));
        }
        if self.contains(digest) {
            return Ok(());
        }
        let mut writer = self.writer(digest)?;
        writer
            .file
            .write_all(data)
            .map_err(|e| self.write_error(format!("writing blob {digest}"), e))?;
        writer.written = data.len() as u64;
        writer.hasher = None;
        writer.commit()
    }

    /// Stores many small blobs, each checked against its digest, with one filesystem sync for
    /// all of them instead of one per blob (when fsync is on). Results are in input order.
    pub fn put_batch(&self, items: Vec<(Digest, Bytes)>) -> Vec<Result<(), Error>> {
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(items.len());
        let mut staged: Vec<(usize, Digest, tempfile::NamedTempFile)> = Vec::new();
        for (i, (digest, data)) in items.into_iter().enumerate() {
            let actual = Digest::of(digest.function(), &data);
            if actual != digest {
                results.push(Err(mismatch(&digest, &actual)));
                continue;
            }
            if self.contains(&digest) {
                results.push(Ok(()));
                continue;
            }
            match self.write_temp(&digest, &data) {
                Ok(tmp) => {
                    staged.push((i, digest, tmp));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if self.inner.options.fsync && !staged.is_empty() {
            if let Err(e) = sync_filesystem(staged[0].2.as_file()) {
                let err = self.write_error("syncing uploaded blobs", e);
                for (i, _, _) in &staged {
                    results[*i] = Err(Error::Unavailable(err.to_string()));
                }
                return results;
            }
        }
        for (i, digest, tmp) in staged {
            if let Err(e) = self.publish(&digest, tmp) {
                results[i] = Err(e);
            }
        }
        results
    }

    /// Writes `data` to a fresh read-only temp file, not yet synced or visible.
    fn write_temp(&self, digest: &Digest, data: &[u8]) -> Result<tempfile::NamedTempFile, Error> {
        let mut tmp = tempfile::Builder::new()
            .prefix("upload-")
            .permissions(Permissions::from_mode(BLOB_MODE))
            .tempfile_in(&self.inner.tmp_dir)
            .map_err(|e| self.write_error("creating an upload file", e))?;
        tmp.write_all(data)
            .map_err(|e| self.write_error(format!("writing blob {digest}"), e))?;
        Ok(tmp)
    }

    /// Starts a streamed write of `digest`; see [`BlobWriter`].
    pub fn writer(&self, digest: &Digest) -> Result<BlobWriter, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .permissions(Permissions::from_mode(BLOB_MODE))
            .tempfile_in(&self.inner.tmp_dir)
            .map_err(|e| self.write_error("creating an upload file", e))?;
        // Writes go to the plain file: tempfile's own Write impl wraps errors in a way that
        // hides their OS code, which callers classify failures by (a full disk must not read
        // as bad client data).
        let (file, path) = tmp.into_parts();
        Ok(BlobWriter {
            cas: self.clone(),
            expected: *digest,
            hasher: Some(digest.function().hasher()),
            written: 0,
            file: BufWriter::with_capacity(256 * 1024, file),
            path,
        })
    }

    /// Maps a write failure and, when the disk is full, frees space for the next attempt.
    fn write_error(&self, context: impl std::fmt::Display, err: io::Error) -> Error {
        self.on_write_failure(&err);
        Error::io(context, err)
    }

    fn on_write_failure(&self, err: &io::Error) {
        if matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            let total = self.inner.index.total_bytes();
            tracing::error!(
                total,
                "disk full while writing; evicting a tenth of the store"
            );
            self.evict_down_to(total - total / 10);
        }
    }

    /// Makes a verified temp file visible as `digest`, atomically with the index.
    fn publish(&self, digest: &Digest, tmp: tempfile::NamedTempFile) -> Result<(), Error> {
        let dest = self.blob_path(digest);
        self.inner
            .index
            .insert_with(*digest, true, || match tmp.persist(&dest) {
                Ok(_) => Ok(()),
                // The blob's shard directory is made on first use.
                Err(e) if e.error.kind() == io::ErrorKind::NotFound => {
                    create_parent(&dest)?;
                    e.file.persist(&dest).map(|_| ()).map_err(|e| e.error)
                }
                Err(e) => Err(e.error),
            })
            .map_err(|e| self.write_error(format!("storing blob {digest}"), e))?;
        CasStats::add(&self.inner.stats.bytes_in, digest.size());
        self.maybe_evict();
        Ok(())
    }

    /// Adds an existing file (an action's output) to the CAS, hashing it, and returns its
    /// digest. The file is hardlinked into place (copied where a link is refused), made
    /// read-only and owned by the server; it must not change afterwards.
    pub fn adopt_file(&self, path: &Path, function: DigestFunction) -> Result<Digest, Error> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let digest = hash_reader(&file, function)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if self.contains(&digest) {
            return Ok(digest);
        }
        if self.inner.options.fsync {
            file.sync_data()
                .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
        }
        // A file made by an action under another uid stays that uid's to chmod and rewrite;
        // a blob must belong to the server alone.
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", path.display()), e))?;
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        if std::os::unix::fs::MetadataExt::uid(&meta) != uid {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("taking ownership of {}", path.display()), e))?;
        }
        fs::set_permissions(path, Permissions::from_mode(BLOB_MODE))
            .map_err(|e| Error::io(format!("making {} read-only", path.display()), e))?;
        let dest = self.blob_path(&digest);
        let linked = self.inner.index.insert_with(digest, true, || {
            let mut result = fs::hard_link(path, &dest);
            if matches!(&result, Err(e) if e.kind() == io::ErrorKind::NotFound) {
                create_parent(&dest)?;
                result = fs::hard_link(path, &dest);
            }
            match result {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
                Err(_) => Ok(false),
            }
        });
        if !linked.unwrap_or(false) {
            // Links refused (another filesystem, link limit): copy through a temp file.
            let tmp = tempfile::Builder::new()
                .prefix("adopt-")
                .permissions(Permissions::from_mode(BLOB_MODE))
                .tempfile_in(&self.inner.tmp_dir)
                .map_err(|e| self.write_error("creating a temp file", e))?;
            fs::copy(path, tmp.path())
                .map_err(|e| self.write_error(format!("storing output {}", path.display()), e))?;
            self.publish(&digest, tmp)?;
            return Ok(digest);
        }
        CasStats::add(&self.inner.stats.bytes_in, digest.size());
        self.maybe_evict();
        Ok(digest)
    }

    /// Removes a blob that turned out to be damaged, so it is reported missing from now on.
    pub fn discard(&self, digest: &Digest) {
        self.inner.index.remove(digest);
        let _ = fs::remove_file(self.blob_path(digest));
    }

    /// Evicts down to the low-water mark if the store is over its budget. One thread evicts
    /// at a time; the others carry on.
    fn maybe_evict(&self) {
        let max = self.inner.options.max_size;
        if max == 0 || self.inner.index.total_bytes() <= max {
            return;
        }
        self.evict_down_to(self.inner.options.low_water);
    }

    /// Removes least recently used, unpinned, unleased blobs until at most `target` bytes
    /// remain (or nothing more may go).
    pub fn evict_down_to(&self, target: u64) {
        if self.inner.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let total = self.inner.index.total_bytes();
        if total > target {
            let (count, bytes) = eviction::evict(self, total - target);
            if count > 0 {
                CasStats::add(&self.inner.stats.evictions, count);
                CasStats::add(&self.inner.stats.evicted_bytes, bytes);
                tracing::info!(
                    count,
                    bytes,
                    remaining = self.inner.index.total_bytes(),
                    "evicted blobs"
                );
            }
            if self.inner.index.total_bytes() > self.inner.options.max_size.max(target) {
                tracing::warn!(
                    total = self.inner.index.total_bytes(),
                    "the store stays over budget: the rest is pinned or in use"
                );
            }
        }
        self.inner.evicting.store(false, Ordering::Release);
    }

    /// Saves the index's use order so a restart keeps LRU order. On a full disk it is not
    /// saved, with a warning: the order only guides eviction, and failing over it would turn
    /// a clean shutdown into an error.
    pub fn save_order(&self) -> Result<(), Error> {
        let order = self.inner.index.order();
        match eviction::write_order(
            &self.inner.tmp_dir,
            &layout::use_order(&self.inner.data_dir),
            &order,
        ) {
            Err(Error::ResourceExhausted(why)) => {
                tracing::warn!(%why, "disk full: the CAS use order was not saved");
                Ok(())
            }
            other => other,
        }
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

/// Creates the (shard) directory a blob goes in.
fn create_parent(dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest.parent().expect("blob paths have a parent"))
}

/// Flushes every dirty page of the filesystem holding `file`: one call makes a whole batch
/// of freshly written blobs durable.
fn sync_filesystem(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a valid, open file descriptor.
    if unsafe { nix::libc::syncfs(file.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Hashes a file's whole content.
pub fn hash_file(path: &Path, function: DigestFunction) -> io::Result<Digest> {
    hash_reader(&File::open(path)?, function)
}

fn hash_reader(mut reader: impl Read, function: DigestFunction) -> io::Result<Digest> {
    let mut hasher = function.hasher();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish(size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn mismatch(expected: &Digest, actual: &Digest) -> Error {
    Error::InvalidArgument(format!(
        "uploaded data does not match its digest: expected {expected}, got {actual}"
    ))
}

fn list_shard(
    function: DigestFunction,
    shard_dir: &Path,
    out: &mut HashSet<Digest>,
) -> Result<(), Error> {
    let entries = fs::read_dir(shard_dir)
        .map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
        let name = entry.file_name();
        match name
            .to_str()
            .and_then(|n| parse_blob_file_name(function, n))
        {
            Some(digest) => {
                out.insert(digest);
            }
            None => {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a blob")
            }
        }
    }
    Ok(())
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
    file: BufWriter<File>,
    /// The temp file's name; deletes the file when dropped.
    path: tempfile::TempPath,
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
        let cas = self.cas;
        let file = self
            .file
            .into_inner()
            .map_err(|e| cas.write_error(format!("writing blob {expected}"), e.into_error()))?;
        if cas.inner.options.fsync {
            file.sync_data()
                .map_err(|e| cas.write_error(format!("syncing blob {expected}"), e))?;
        }
        cas.publish(
            &expected,
            tempfile::NamedTempFile::from_parts(file, self.path),
        )
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
        let n = self
            .file
            .write(buf)
            .inspect_err(|e| self.cas.on_write_failure(e))?;
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
        assert!(matches!(
            cas.put(&d, b"hellO"),
            Err(Error::InvalidArgument(_))
        ));
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
