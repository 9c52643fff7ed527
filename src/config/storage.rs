//! The `[storage]` section: the local blob store's budget and durability, the batch limits
//! derived from it, and the optional object-store tier behind it.

use bytesize::ByteSize;
use serde::Deserialize;

use super::{ConfigError, RemoteConfig};

/// Settings of the blob store and the gRPC limits derived from it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Largest total of blob bytes in one batch request or response.
    pub max_batch_total_size: ByteSize,
    /// Flush every blob to stable storage before it becomes visible.
    pub fsync: bool,
    /// Disk budget of the CAS; 0 means unbounded.
    pub max_size: ByteSize,
    /// Eviction brings the store down to this percentage of `max_size`.
    pub low_water_percent: u8,
    /// Blobs a client was just told exist (FindMissingBlobs, action-cache hits, fresh
    /// outputs) are kept at least this long.
    pub min_retention_secs: u64,
    /// FastCDC 2020 average chunk size for SplitBlob/SpliceBlob, advertised in Capabilities.
    pub chunk_average_size: ByteSize,
    /// FastCDC 2020 gear-table seed, advertised in Capabilities.
    pub chunk_seed: u32,
    /// Bound on the chunk digests SplitBlob remembers across blobs.
    pub max_split_cache_chunks: usize,
    /// The object-store tier; unset, blobs live on the local disk alone.
    pub remote: Option<RemoteConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            max_batch_total_size: ByteSize::mib(4),
            fsync: true,
            max_size: ByteSize::gib(50),
            low_water_percent: 90,
            min_retention_secs: 3600,
            chunk_average_size: ByteSize::kib(512),
            chunk_seed: 0,
            max_split_cache_chunks: 262_144,
            remote: None,
        }
    }
}

impl StorageConfig {
    /// The chunking SplitBlob uses and Capabilities advertises.
    pub fn chunking(&self) -> crate::storage::chunking::ChunkingOptions {
        crate::storage::chunking::ChunkingOptions {
            fast_cdc: crate::storage::chunking::FastCdcParams {
                avg: self.chunk_average_size.as_u64() as u32,
                seed: self.chunk_seed,
            },
            max_cached_chunks: self.max_split_cache_chunks,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100).contains(&self.low_water_percent) {
            return Err(ConfigError::Invalid(format!(
                "storage.low_water_percent must be between 1 and 100, not {}",
                self.low_water_percent
            )));
        }
        let batch = self.max_batch_total_size.as_u64();
        if !(64 * 1024..=256 * 1024 * 1024).contains(&batch) {
            return Err(ConfigError::Invalid(format!(
                "storage.max_batch_total_size must be between 64KiB and 256MiB, not {}",
                self.max_batch_total_size
            )));
        }
        let avg = self.chunk_average_size.as_u64();
        if !avg.is_power_of_two() || !(1024..=1024 * 1024).contains(&avg) {
            return Err(ConfigError::Invalid(format!(
                "storage.chunk_average_size must be a power of two from 1KiB to 1MiB (the \
                 FastCDC 2020 range clients accept), not {}",
                self.chunk_average_size
            )));
        }
        match &self.remote {
            Some(remote) => remote.validate(),
            None => Ok(()),
        }
    }
}
