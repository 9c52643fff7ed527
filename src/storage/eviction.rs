//! Eviction of least recently used blobs, and the saved use order that lets a restart keep
//! LRU order.

use std::fs;
use std::path::Path;

use crate::digest::{Digest, DigestFunction, HASH_LEN};
use crate::error::Error;
use crate::storage::Cas;

/// Evicts at least `bytes` worth of evictable blobs if there are that many; returns how many
/// blobs and bytes went.
pub fn evict(cas: &Cas, bytes: u64) -> (u64, u64) {
    let mut count = 0;
    let mut freed = 0;
    for candidate in cas.index().candidates(bytes) {
        let path = cas.blob_path(&candidate.digest);
        let evicted = cas.index().evict_with(&candidate, || {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an evicted blob");
            }
        });
        if evicted {
            count += 1;
            freed += candidate.digest.size();
            crate::storage::executable::forget_executable_copy(cas, &candidate.digest);
        }
    }
    (count, freed)
}

const RECORD: usize = 1 + HASH_LEN + 8;

fn function_code(f: DigestFunction) -> u8 {
    DigestFunction::ALL
        .iter()
        .position(|x| *x == f)
        .unwrap_or(0) as u8
}

/// Writes digests (least recently used first) as fixed-size records.
pub fn write_order(tmp_dir: &Path, path: &Path, order: &[Digest]) -> Result<(), Error> {
    let mut data = Vec::with_capacity(order.len() * RECORD);
    for d in order {
        data.push(function_code(d.function()));
        data.extend_from_slice(d.hash_bytes());
        data.extend_from_slice(&d.size().to_le_bytes());
    }
    crate::storage::write_atomic(tmp_dir, path, &data, false)
}

/// Reads a saved order; a missing or damaged file gives what could be read (possibly nothing).
pub fn read_order(path: &Path) -> Vec<Digest> {
    let Ok(data) = fs::read(path) else {
        return Vec::new();
    };
    data.chunks_exact(RECORD)
        .filter_map(|r| {
            let function = *DigestFunction::ALL.get(r[0] as usize)?;
            let size = u64::from_le_bytes(r[1 + HASH_LEN..].try_into().ok()?);
            Digest::parse(function, &hex::encode(&r[1..1 + HASH_LEN]), size as i64).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let order: Vec<Digest> = (0..3u8)
            .map(|i| Digest::of(DigestFunction::Sha256, &[i]))
            .collect();
        let path = dir.path().join("order");
        write_order(dir.path(), &path, &order).unwrap();
        assert_eq!(read_order(&path), order);
        assert!(read_order(&dir.path().join("absent")).is_empty());
    }
}
