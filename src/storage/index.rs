//! The in-memory index of the blobs on disk. FindMissingBlobs and existence checks are answered
//! from here, never with a `stat` per digest.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::digest::Digest;

/// What the index knows of one stored blob.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Logical clock of the last use; the eviction order of later work.
    last_use: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, Entry>,
    clock: u64,
    total_bytes: u64,
}

/// Presence and use order of every blob in the CAS.
#[derive(Default)]
pub struct Index {
    // A std Mutex: every critical section is a few hash-map operations and never awaits.
    inner: Mutex<Inner>,
}

impl Index {
    /// Records a blob as present (and just used).
    pub fn insert(&self, digest: Digest) {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let last_use = inner.clock;
        if inner.entries.insert(digest, Entry { last_use }).is_none() {
            inner.total_bytes += digest.size();
        }
    }

    pub fn remove(&self, digest: &Digest) {
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.remove(digest).is_some() {
            inner.total_bytes -= digest.size();
        }
    }

    /// Whether the blob is present, counting the check as a use.
    pub fn touch(&self, digest: &Digest) -> bool {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let now = inner.clock;
        match inner.entries.get_mut(digest) {
            Some(entry) => {
                entry.last_use = now;
                true
            }
            None => false,
        }
    }

    /// The digests among `digests` that are absent, touching the present ones, under one lock.
    pub fn missing<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Vec<Digest> {
        let mut inner = self.inner.lock().unwrap();
        inner.clock += 1;
        let now = inner.clock;
        let mut missing = Vec::new();
        for d in digests {
            match inner.entries.get_mut(d) {
                Some(entry) => entry.last_use = now,
                None => missing.push(*d),
            }
        }
        missing
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sum of the sizes of all indexed blobs.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock().unwrap().total_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn insert_remove_missing() {
        let index = Index::default();
        let a = Digest::of(DigestFunction::Sha256, b"a");
        let b = Digest::of(DigestFunction::Sha256, b"bb");
        index.insert(a);
        index.insert(a);
        assert_eq!(index.len(), 1);
        assert_eq!(index.total_bytes(), 1);
        assert_eq!(index.missing([&a, &b]), vec![b]);
        assert!(index.touch(&a));
        index.remove(&a);
        assert!(!index.touch(&a));
        assert_eq!(index.total_bytes(), 0);
    }
}
