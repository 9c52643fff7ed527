//! Executable copies of CAS blobs. A hardlink shares its inode's mode, and CAS blobs are
//! read-only and not executable, so an input staged with the executable bit needs a copy of
//! its own. The copies are a view derived from the CAS: the CAS's eviction removes a blob's
//! copy with the blob.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::Error;
use crate::storage::Cas;
use crate::storage::layout;

/// Where executable variants of CAS blobs live: a hardlink shares its inode's mode, so a blob
/// staged both with and without the executable bit needs a second, executable copy.
pub struct ExecutableCache {
    data_dir: PathBuf,
    tmp_dir: PathBuf,
}

impl ExecutableCache {
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        crate::storage::ensure_private_dir(&layout::executable_copies(data_dir))?;
        Ok(ExecutableCache {
            data_dir: data_dir.to_path_buf(),
            tmp_dir: layout::tmp(data_dir),
        })
    }

    /// Path of a read-only, executable copy of a stored blob, made on first use.
    pub fn path(&self, cas: &Cas, digest: &Digest) -> Result<PathBuf, Error> {
        let path = executable_copy_path(&self.data_dir, digest);
        if path.exists() {
            return Ok(path);
        }
        let tmp = tempfile::Builder::new()
            .prefix("exec-")
            .tempfile_in(&self.tmp_dir)
            .map_err(|e| Error::io("creating a temp file", e))?;
        fs::copy(cas.blob_path(digest), tmp.path())
            .map_err(|e| Error::io(format!("copying blob {digest}"), e))?;
        fs::set_permissions(tmp.path(), Permissions::from_mode(0o555))
            .map_err(|e| Error::io("setting permissions", e))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(format!("storing executable copy of {digest}"), e.error))?;
        Ok(path)
    }
}

/// Removes the executable copy of an evicted blob, if one was made.
pub fn forget_executable_copy(cas: &Cas, digest: &Digest) {
    let _ = fs::remove_file(executable_copy_path(cas.data_dir(), digest));
}

fn executable_copy_path(data_dir: &Path, digest: &Digest) -> PathBuf {
    layout::executable_copies(data_dir).join(format!(
        "{}-{}-{}",
        digest.function().name(),
        digest.hash_hex(),
        digest.size()
    ))
}
