//! `rexd verify`: re-hashes every blob in the store and removes (or lists) the damaged ones.

use crate::digest::Digest;
use crate::error::Error;
use crate::storage::Cas;
use crate::storage::disk::hash_file;

/// What a full check found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Blobs whose content does not match their name (removed unless a dry run).
    pub damaged: Vec<Digest>,
    /// Blobs the index had but whose file was gone.
    pub vanished: Vec<Digest>,
}

/// Checks every blob; with `remove`, damaged ones are deleted so they read as missing.
pub fn verify_all(cas: &Cas, remove: bool) -> Result<VerifyReport, Error> {
    let mut report = VerifyReport::default();
    for digest in cas.index().order() {
        report.checked += 1;
        report.bytes += digest.size();
        match hash_file(&cas.blob_path(&digest), digest.function()) {
            Ok(actual) if actual == digest => cas.index().mark_verified(&digest),
            Ok(_) => {
                report.damaged.push(digest);
                if remove {
                    cas.discard(&digest);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.vanished.push(digest);
                cas.index().remove(&digest);
            }
            Err(e) => return Err(Error::io(format!("reading blob {digest}"), e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::storage::CasOptions;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_and_removes_damaged_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), CasOptions::default()).unwrap();
        let good = Digest::of(DigestFunction::Sha256, b"good");
        let bad = Digest::of(DigestFunction::Sha256, b"bad!");
        cas.put(&good, b"good").unwrap();
        cas.put(&bad, b"bad!").unwrap();
        let path = cas.blob_path(&bad);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"rot!").unwrap();

        let report = verify_all(&cas, false).unwrap();
        assert_eq!(report.damaged, vec![bad]);
        assert!(cas.contains(&bad), "a dry run removes nothing");
        let report = verify_all(&cas, true).unwrap();
        assert_eq!(report.damaged, vec![bad]);
        assert!(!cas.contains(&bad));
        assert!(cas.contains(&good));
    }
}
