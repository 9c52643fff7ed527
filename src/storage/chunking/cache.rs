//! The chunk lists of blobs already split, so asking again costs a lookup instead of reading
//! and hashing the whole blob. Bounded by the total number of chunk digests held.

use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::digest::Digest;

/// Least recently used chunk lists, at most `max_chunks` chunk digests in all.
pub struct SplitCache {
    inner: Mutex<Inner>,
    max_chunks: usize,
}

struct Inner {
    lists: LruCache<Digest, Arc<[Digest]>>,
    chunks: usize,
}

impl SplitCache {
    /// An empty cache; `max_chunks` 0 remembers nothing.
    pub fn new(max_chunks: usize) -> Self {
        SplitCache {
            inner: Mutex::new(Inner {
                lists: LruCache::unbounded(),
                chunks: 0,
            }),
            max_chunks,
        }
    }

    /// The remembered list, marked as recently used.
    pub fn get(&self, blob: &Digest) -> Option<Arc<[Digest]>> {
        let mut inner = self.inner.lock().expect("split cache lock");
        inner.lists.get(blob).cloned()
    }

    /// Remembers `chunks` for `blob`, dropping the least recently used lists to stay within
    /// the bound; a list longer than the whole bound is not kept.
    pub fn insert(&self, blob: Digest, chunks: Arc<[Digest]>) {
        if chunks.len() > self.max_chunks {
            return;
        }
        let mut inner = self.inner.lock().expect("split cache lock");
        if let Some(old) = inner.lists.put(blob, chunks.clone()) {
            inner.chunks -= old.len();
        }
        inner.chunks += chunks.len();
        while inner.chunks > self.max_chunks {
            match inner.lists.pop_lru() {
                Some((_, dropped)) => inner.chunks -= dropped.len(),
                None => break,
            }
        }
    }

    /// Drops a list found stale (a chunk or the blob was evicted).
    pub fn forget(&self, blob: &Digest) {
        let mut inner = self.inner.lock().expect("split cache lock");
        if let Some(old) = inner.lists.pop(blob) {
            inner.chunks -= old.len();
        }
    }

    /// (lists, chunk digests) held.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("split cache lock");
        (inner.lists.len(), inner.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn digest(i: u32) -> Digest {
        Digest::of(DigestFunction::Sha256, &i.to_le_bytes())
    }

    fn list(n: u32) -> Arc<[Digest]> {
        (0..n).map(digest).collect()
    }

    #[test]
    fn holds_at_most_the_bound_in_chunk_digests() {
        let cache = SplitCache::new(10);
        for i in 0..100 {
            cache.insert(digest(1000 + i), list(3));
            assert!(cache.size().1 <= 10, "{:?}", cache.size());
        }
        assert_eq!(cache.size(), (3, 9));
        // The newest lists stay; the oldest went.
        assert!(cache.get(&digest(1099)).is_some());
        assert!(cache.get(&digest(1000)).is_none());
        // Too long to keep at all.
        cache.insert(digest(7), list(11));
        assert!(cache.get(&digest(7)).is_none());
        // Replacing a list counts only the new one.
        cache.insert(digest(1099), list(1));
        assert_eq!(cache.size(), (3, 7));
        cache.forget(&digest(1099));
        assert_eq!(cache.size(), (2, 6));
    }
}
