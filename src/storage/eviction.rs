//! Eviction of least recently used blobs, and the saved use order that lets a restart keep
//! LRU order.

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::digest::{Digest, DigestFunction, HASH_LEN};
use crate::error::Error;
use crate::storage::Cas;
use crate::storage::layout;
use crate::storage::stats::CasStats;

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

impl Cas {
    /// Evicts down to the low-water mark if the store is over its budget. One thread evicts
    /// at a time; the others carry on.
    pub(super) fn maybe_evict(&self) {
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
            let (count, bytes) = evict(self, total - target);
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
        match write_order(
            &self.inner.tmp_dir,
            &layout::use_order(&self.inner.data_dir),
            &order,
        ) {
            Err(Error::DiskFull(why)) => {
                tracing::warn!(%why, "disk full: the CAS use order was not saved");
                Ok(())
            }
            other => other,
        }
    }
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
        let mut hash = [0u8; HASH_LEN];
        hash[..d.hash_bytes().len()].copy_from_slice(d.hash_bytes());
        data.extend_from_slice(&hash);
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
            let hash = &r[1..1 + function.hash_len()];
            Digest::parse(function, &hex::encode(hash), size as i64).ok()
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
