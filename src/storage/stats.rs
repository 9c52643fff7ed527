//! Counters of what the CAS did, kept in one place for logs and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; read with [`CasStats::snapshot`].
#[derive(Default, Debug)]
pub struct CasStats {
    /// Blobs asked for (read, or checked for) and found.
    pub hits: AtomicU64,
    /// Blobs asked for and absent.
    pub misses: AtomicU64,
    /// Bytes of new blobs stored.
    pub bytes_in: AtomicU64,
    /// Bytes of blobs served.
    pub bytes_out: AtomicU64,
    pub evictions: AtomicU64,
    pub evicted_bytes: AtomicU64,
    /// Stored blobs found not to match their digest and removed.
    pub corrupt: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CasStatsSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub corrupt: u64,
}

impl CasStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CasStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CasStatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            evictions: get(&self.evictions),
            evicted_bytes: get(&self.evicted_bytes),
            corrupt: get(&self.corrupt),
        }
    }
}
