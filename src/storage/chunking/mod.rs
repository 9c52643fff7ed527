//! Content-defined chunking of large blobs (REAPI v2.12 SplitBlob and SpliceBlob).
//!
//! Chunks are ordinary CAS blobs, stored once each however many blobs contain them, so two
//! versions of a large output that differ in a few MiB share every other chunk on the disk
//! and in the object-store tier. The whole blob is kept as one file beside its chunks: reads,
//! staging into sandboxes and hashing stay a single sequential file, and a blob nobody splits
//! costs nothing extra. See [`split`] and [`splice`].

mod cache;
pub mod splice;
pub mod split;
#[cfg(test)]
mod tests;

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};

pub use cache::SplitCache;

/// The FastCDC 2020 parameters every chunking here uses, as advertised in Capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastCdcParams {
    /// Expected chunk size; the spec fixes min at a quarter of it and max at four times it.
    pub avg: u32,
    /// XORed into the gear table; every client sharing a cache should use the same one.
    pub seed: u32,
}

impl FastCdcParams {
    /// The spec fixes the smallest chunk at a quarter of the average.
    pub fn min(&self) -> u32 {
        self.avg / 4
    }

    /// The largest chunk, four times the average; smaller blobs are not split.
    pub fn max(&self) -> u32 {
        self.avg.saturating_mul(4)
    }

    /// Chunks of `reader`, as the spec's FastCDC 2020 (normalization level 2) cuts them.
    pub fn chunks<R: Read>(&self, reader: R) -> StreamCDC<R> {
        StreamCDC::with_level_and_seed(
            reader,
            self.min(),
            self.avg,
            self.max(),
            Normalization::Level2,
            u64::from(self.seed),
        )
    }
}

/// Chunking settings of the CAS.
#[derive(Clone, Copy, Debug)]
pub struct ChunkingOptions {
    pub fast_cdc: FastCdcParams,
    /// Bound on the chunk digests remembered for blobs already split.
    pub max_cached_chunks: usize,
}

/// SplitBlob and SpliceBlob over both storage tiers.
#[derive(Clone)]
pub struct Chunker {
    cas: crate::storage::Cas,
    store: crate::storage::TieredStore,
    options: ChunkingOptions,
    cache: std::sync::Arc<SplitCache>,
}

impl Chunker {
    /// A chunker with an empty cache of chunk lists.
    pub fn new(
        cas: crate::storage::Cas,
        store: crate::storage::TieredStore,
        options: ChunkingOptions,
    ) -> Self {
        Chunker {
            cas,
            store,
            cache: std::sync::Arc::new(SplitCache::new(options.max_cached_chunks)),
            options,
        }
    }

    /// The parameters Capabilities advertises.
    pub fn options(&self) -> &ChunkingOptions {
        &self.options
    }

    /// (blobs, chunk digests) whose split is remembered.
    pub fn cached(&self) -> (usize, usize) {
        self.cache.size()
    }
}
