//! Writes into the CAS: whole buffers, batches with one filesystem sync, streamed uploads
//! hashed as they arrive ([`BlobWriter`]), and adopting an action's output files. Every write
//! lands in a temp file, is verified against its digest, and only then is renamed into place,
//! atomically with the index.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction, Hasher};
use crate::error::Error;
use crate::storage::Cas;
use crate::storage::cas::BLOB_MODE;
use crate::storage::disk::hash_open_file;
use crate::storage::stats::CasStats;

/// Outputs hashed for the CAS but not yet durable or visible: one filesystem sync for all of
/// an action's outputs ([`Cas::sync_adopted`]) instead of one per file, which on a virtual
/// disk is a cache flush each.
#[derive(Default)]
pub struct Unsynced {
    /// One adopted file, kept open to name the filesystem to sync.
    any: Option<File>,
    files: Vec<(std::path::PathBuf, Digest)>,
}

impl Cas {
    /// Stores `data` under `digest` after checking that it hashes to it.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> Result<(), Error> {
        self.put_synced(digest, data, self.inner.options.fsync)
    }

    /// [`Cas::put`], syncing before the blob is visible only with `sync` (and fsync on): an
    /// upload in write-through mode is durable in the bucket instead.
    pub fn put_synced(&self, digest: &Digest, data: &[u8], sync: bool) -> Result<(), Error> {
        let actual = Digest::of(digest.function(), data);
        if actual != *digest {
            return Err(mismatch(digest, &actual));
        }
        if self.contains(digest) {
            return Ok(());
        }
        let mut writer = self.writer(digest)?;
        if !sync {
            writer = writer.without_sync();
        }
        writer
            .file
            .write_all(data)
            .map_err(|e| self.write_error(format!("writing blob {digest}"), e))?;
        writer.written = data.len() as u64;
        writer.hasher = None;
        writer.commit().map(|_| ())
    }

    /// Stores many small blobs, each checked against its digest, with one filesystem sync for
    /// all of them instead of one per blob (when fsync is on). Results are in input order.
    pub fn put_batch(&self, items: Vec<(Digest, Bytes)>) -> Vec<Result<(), Error>> {
        self.put_batch_checked(items, true)
    }

    /// [`Cas::put_batch`] of content whose digests the caller has just computed from these
    /// very bytes (chunks cut by SplitBlob), which would only be hashed a second time.
    pub(crate) fn put_batch_hashed(&self, items: Vec<(Digest, Bytes)>) -> Vec<Result<(), Error>> {
        self.put_batch_checked(items, false)
    }

    fn put_batch_checked(
        &self,
        items: Vec<(Digest, Bytes)>,
        verify: bool,
    ) -> Vec<Result<(), Error>> {
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(items.len());
        let mut staged: Vec<(usize, Digest, tempfile::NamedTempFile)> = Vec::new();
        for (i, (digest, data)) in items.into_iter().enumerate() {
            if verify {
                let actual = Digest::of(digest.function(), &data);
                if actual != digest {
                    results.push(Err(mismatch(&digest, &actual)));
                    continue;
                }
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
                    results[*i] = Err(err.clone());
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
            expected: Some(*digest),
            hasher: Some(digest.function().hasher(digest.size())),
            function: digest.function(),
            written: 0,
            file: BufWriter::with_capacity(256 * 1024, file),
            path,
            sync: self.inner.options.fsync,
        })
    }

    /// Starts a streamed write of content whose digest is not known beforehand (a download):
    /// it is hashed with `function` as it is written and stored under the result.
    pub fn content_writer(&self, function: DigestFunction) -> Result<BlobWriter, Error> {
        let mut writer = self.writer(&Digest::empty(function))?;
        writer.expected = None;
        // GITSHA1 hashes the size first, which only the end of the content tells: the file
        // is hashed once it is complete instead.
        writer.hasher = (function != DigestFunction::GitSha1).then(|| function.hasher(0));
        writer.function = function;
        Ok(writer)
    }

    /// Maps a write failure and, when the disk is full, frees space for the next attempt.
    pub(super) fn write_error(&self, context: impl std::fmt::Display, err: io::Error) -> Error {
        self.on_write_failure(&err);
        Error::io(context, err)
    }

    pub(super) fn on_write_failure(&self, err: &io::Error) {
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

    /// Hashes an existing file (an action's output) for the CAS and returns its digest. The
    /// file is made read-only and owned by the server; it must not change afterwards. It
    /// enters the CAS with the rest of `unsynced` in [`Cas::sync_adopted`].
    pub fn adopt_file(
        &self,
        path: &Path,
        function: DigestFunction,
        unsynced: &mut Unsynced,
    ) -> Result<Digest, Error> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let digest = hash_open_file(&file, function)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if self.contains(&digest) {
            return Ok(digest);
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
        if unsynced.any.is_none() {
            unsynced.any = Some(file);
        }
        unsynced.files.push((path.to_path_buf(), digest));
        Ok(digest)
    }

    /// Makes every file adopted into `unsynced` durable with one filesystem sync (when fsync
    /// is on), then links each into the CAS and pins it: a blob becomes visible only once it
    /// is durable, as an uploaded one does.
    pub fn sync_adopted(&self, unsynced: Unsynced) -> Result<(), Error> {
        let Some(any) = unsynced.any else {
            return Ok(());
        };
        if self.inner.options.fsync {
            sync_filesystem(&any)
                .map_err(|e| self.write_error("syncing an action's outputs", e))?;
        }
        for (path, digest) in &unsynced.files {
            self.link_adopted(path, digest)?;
        }
        self.pin(unsynced.files.iter().map(|(_, d)| d));
        Ok(())
    }

    /// Hardlinks an adopted file into place, or copies it where a link is refused.
    fn link_adopted(&self, path: &Path, digest: &Digest) -> Result<(), Error> {
        let dest = self.blob_path(digest);
        let linked = self.inner.index.insert_with(*digest, true, || {
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
            return self.publish(digest, tmp);
        }
        CasStats::add(&self.inner.stats.bytes_in, digest.size());
        self.maybe_evict();
        Ok(())
    }
}

/// A blob being written: bytes are hashed as they arrive and land in a temp file, which
/// becomes visible under the blob's name only if [`BlobWriter::commit`] verifies it.
/// Dropping an uncommitted writer deletes the temp file.
pub struct BlobWriter {
    cas: Cas,
    /// The digest the content must have; `None` for content stored under whatever digest it
    /// turns out to have.
    expected: Option<Digest>,
    /// `None` once the data was verified up front (whole-buffer puts), or for content of
    /// unknown size hashed with GITSHA1, which is hashed from the file at commit.
    hasher: Option<Hasher>,
    function: DigestFunction,
    written: u64,
    file: BufWriter<File>,
    /// The temp file's name; deletes the file when dropped.
    path: tempfile::TempPath,
    /// Whether commit syncs the file (`storage.fsync`, unless durable elsewhere).
    sync: bool,
}

impl BlobWriter {
    /// Bytes accepted so far; the committed size a resumed upload continues from.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Commits without syncing the file: for copies whose durability the object store
    /// provides (a fill from the bucket, a write-through upload). A copy torn by a power
    /// loss is caught by the hash check that every blob found at start-up gets on first use.
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }

    /// The digest the content must have, if it was given.
    pub fn digest(&self) -> Option<&Digest> {
        self.expected.as_ref()
    }

    /// Verifies size and hash (or, for content of unknown digest, computes it), flushes (and
    /// fsyncs if configured), then renames into place. Returns the blob's digest.
    pub fn commit(self) -> Result<Digest, Error> {
        let BlobWriter {
            cas,
            expected,
            hasher,
            written,
            file,
            path,
            sync,
            function,
        } = self;
        if let Some(expected) = expected {
            if written != expected.size() {
                return Err(Error::BadInput(format!(
                    "upload of {expected} ended after {written} bytes, but the digest says {}",
                    expected.size()
                )));
            }
            if let Some(hasher) = &hasher {
                let actual = hasher.clone().finish(written);
                if actual != expected {
                    return Err(mismatch(&expected, &actual));
                }
            }
        }
        let file = file
            .into_inner()
            .map_err(|e| cas.write_error("writing a blob", e.into_error()))?;
        let digest = match (expected, hasher) {
            (Some(expected), _) => expected,
            (None, Some(hasher)) => hasher.finish(written),
            (None, None) => hash_open_file(
                &File::open(&path).map_err(|e| Error::io("reopening a download", e))?,
                function,
            )
            .map_err(|e| Error::io("hashing a download", e))?,
        };
        if expected.is_none() && cas.contains(&digest) {
            return Ok(digest); // Already stored; the temp file goes.
        }
        if sync {
            file.sync_data()
                .map_err(|e| cas.write_error(format!("syncing blob {digest}"), e))?;
        }
        cas.publish(&digest, tempfile::NamedTempFile::from_parts(file, path))?;
        Ok(digest)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(expected) = &self.expected
            && self.written + buf.len() as u64 > expected.size()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "more data than the digest's size of {} bytes",
                    expected.size()
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

fn mismatch(expected: &Digest, actual: &Digest) -> Error {
    Error::BadInput(format!(
        "uploaded data does not match its digest: expected {expected}, got {actual}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::CasOptions;
    use std::io::Read;

    #[test]
    fn adopted_outputs_enter_the_cas_only_after_their_sync() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("data"), CasOptions::default()).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let f = DigestFunction::Sha256;
        for (name, content) in [
            ("a", &b"first output"[..]),
            ("b", b"second"),
            ("c", b"second"),
        ] {
            fs::write(out.join(name), content).unwrap();
        }

        let mut unsynced = Unsynced::default();
        let a = cas.adopt_file(&out.join("a"), f, &mut unsynced).unwrap();
        let b = cas.adopt_file(&out.join("b"), f, &mut unsynced).unwrap();
        let c = cas.adopt_file(&out.join("c"), f, &mut unsynced).unwrap();
        assert_eq!(b, c, "the same content twice in one action");
        assert!(
            !cas.contains(&a) && !cas.contains(&b),
            "visible before durable"
        );
        cas.sync_adopted(unsynced).unwrap();
        assert!(cas.contains(&a) && cas.contains(&b));
        let mut stored = Vec::new();
        cas.open_blob(&a)
            .unwrap()
            .unwrap()
            .read_to_end(&mut stored)
            .unwrap();
        assert_eq!(stored, b"first output");

        // Content already stored needs nothing more.
        fs::write(out.join("again"), b"first output").unwrap();
        let mut again = Unsynced::default();
        assert_eq!(
            cas.adopt_file(&out.join("again"), f, &mut again).unwrap(),
            a
        );
        assert!(again.files.is_empty() && again.any.is_none());
    }
}
