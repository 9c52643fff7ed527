//! The action cache: one `ActionResult` per (instance, action digest), persisted on disk.
//!
//! Layout: `ac/{instance}/{function}/{hh}/{hash}-{size}`, where `{instance}` is the instance
//! name escaped into a single path component. Entries are replaced atomically.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::digest::Digest;
use crate::error::Error;
use crate::proto::remote_execution::ActionResult;
use crate::storage::layout;
use crate::storage::{ensure_dir, write_atomic};

/// Handle to the on-disk action cache; cheap to clone.
#[derive(Clone)]
pub struct ActionCache {
    root: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
}

impl ActionCache {
    pub fn open(data_dir: &Path, fsync: bool) -> Result<Self, Error> {
        let root = layout::action_cache(data_dir);
        let tmp_dir = layout::tmp(data_dir);
        crate::storage::ensure_private_dir(&root)?;
        ensure_dir(&tmp_dir)?;
        Ok(ActionCache {
            root,
            tmp_dir,
            fsync,
        })
    }

    fn entry_path(&self, instance: &str, digest: &Digest) -> PathBuf {
        let hash = digest.hash_hex();
        let mut path = self.root.join(instance_dir_name(instance));
        path.push(digest.function().name());
        path.push(&hash[..2]);
        path.push(format!("{hash}-{}", digest.size()));
        path
    }

    /// The stored result, if any. An entry that no longer decodes is removed and reported as
    /// absent: a cache miss is always safe, a garbled result never is.
    pub fn get(&self, instance: &str, digest: &Digest) -> Result<Option<ActionResult>, Error> {
        let path = self.entry_path(instance, digest);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading action cache entry {digest}"), e)),
        };
        match ActionResult::decode(&data[..]) {
            Ok(result) => Ok(Some(result)),
            Err(e) => {
                tracing::error!(%digest, instance, error = %e, "corrupt action cache entry; removing it");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    pub fn put(&self, instance: &str, digest: &Digest, result: &ActionResult) -> Result<(), Error> {
        let path = self.entry_path(instance, digest);
        let parent = path.parent().expect("entry paths have a parent");
        if !parent.exists() {
            ensure_dir(parent)?;
        }
        write_atomic(&self.tmp_dir, &path, &result.encode_to_vec(), self.fsync)
    }
}

/// The stored result for `digest`, but only if every blob it names is still in the CAS;
/// a result with missing outputs is as good as no result.
pub fn lookup_complete(
    cas: &crate::storage::Cas,
    ac: &ActionCache,
    instance: &str,
    digest: &Digest,
) -> Result<Option<ActionResult>, Error> {
    let Some(result) = ac.get(instance, digest)? else {
        return Ok(None);
    };
    let missing = crate::storage::tree::missing_blobs_of_result(cas, digest.function(), &result)?;
    if !missing.is_empty() {
        tracing::debug!(%digest, missing = missing.len(), "action result incomplete; not served");
        return Ok(None);
    }
    Ok(Some(result))
}

/// Escapes an instance name into one path component: `[A-Za-z0-9._-]` stay, everything else
/// (including `/`) becomes `%XX`. The empty name is `%` alone, which no escaped name can be.
fn instance_dir_name(instance: &str) -> String {
    if instance.is_empty() {
        return "%".to_string();
    }
    let mut out = String::with_capacity(instance.len());
    for b in instance.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn instance_names_escape_to_one_component() {
        assert_eq!(instance_dir_name(""), "%");
        assert_eq!(instance_dir_name("main"), "main");
        assert_eq!(instance_dir_name("a/b"), "a%2Fb");
        assert_eq!(instance_dir_name(".."), "%2E.");
        assert_ne!(instance_dir_name("a/b"), instance_dir_name("a%2Fb"));
    }

    #[test]
    fn put_get_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let ac = ActionCache::open(dir.path(), false).unwrap();
        let d = Digest::of(DigestFunction::Sha256, b"action");
        let result = ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        assert!(ac.get("", &d).unwrap().is_none());
        ac.put("", &d, &result).unwrap();
        assert_eq!(ac.get("", &d).unwrap().unwrap().exit_code, 3);
        assert!(ac.get("other", &d).unwrap().is_none());

        fs::write(ac.entry_path("", &d), b"\xff\xff garbage").unwrap();
        assert!(ac.get("", &d).unwrap().is_none());
    }
}
