//! The in-memory index of the blobs on disk: presence, size, use order, pins and leases.
//! FindMissingBlobs and existence checks are answered from here, never with a `stat` per
//! digest, and eviction picks its victims here.

use std::sync::Mutex;
use std::time::Instant;

use lru::LruCache;

use crate::digest::Digest;

/// What the index knows of one stored blob.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Bumped on every use; eviction only removes an entry still at the tick it chose it at.
    tick: u64,
    /// Readers, writers and running actions holding the blob.
    leases: u32,
    /// Not evicted before this instant: a client was just told the blob is there.
    pinned_until: Option<Instant>,
    /// Hash checked since this process started (written here, or verified on first read).
    verified: bool,
}

struct Inner {
    /// Least recently used at the back.
    entries: LruCache<Digest, Entry>,
    tick: u64,
    total_bytes: u64,
}

/// Presence and use order of every blob in the CAS.
pub struct Index {
    // A std Mutex: critical sections are map operations (plus, for inserts and evictions,
    // the one rename or unlink that must be atomic with them); nothing awaits under it.
    inner: Mutex<Inner>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            inner: Mutex::new(Inner {
                entries: LruCache::unbounded(),
                tick: 0,
                total_bytes: 0,
            }),
        }
    }
}

/// A blob chosen for eviction, with the tick it had when chosen.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub digest: Digest,
    tick: u64,
}

impl Inner {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

impl Index {
    /// Records a blob as present and just used. `f` runs under the index lock first, so the
    /// file operation that makes the blob visible is atomic with eviction.
    pub fn insert_with<T>(
        &self,
        digest: Digest,
        verified: bool,
        f: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut inner = self.inner.lock().unwrap();
        let value = f()?;
        let tick = inner.next_tick();
        match inner.entries.get_mut(&digest) {
            Some(entry) => {
                entry.tick = tick;
                entry.verified |= verified;
            }
            None => {
                inner.entries.push(
                    digest,
                    Entry {
                        tick,
                        leases: 0,
                        pinned_until: None,
                        verified,
                    },
                );
                inner.total_bytes += digest.size();
            }
        }
        Ok(value)
    }

    #[cfg(test)]
    pub fn insert(&self, digest: Digest, verified: bool) {
        let _ = self.insert_with(digest, verified, || Ok(()));
    }

    /// Adds blobs found on disk at start-up, oldest first, without marking them verified.
    pub fn load(&self, digests: impl IntoIterator<Item = Digest>) {
        let mut inner = self.inner.lock().unwrap();
        for digest in digests {
            if inner.entries.contains(&digest) {
                continue;
            }
            let tick = inner.next_tick();
            inner.entries.push(
                digest,
                Entry {
                    tick,
                    leases: 0,
                    pinned_until: None,
                    verified: false,
                },
            );
            inner.total_bytes += digest.size();
        }
    }

    /// Forgets a blob (its file is already gone or known bad).
    pub fn remove(&self, digest: &Digest) {
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.pop(digest).is_some() {
            inner.total_bytes -= digest.size();
        }
    }

    /// Whether the blob is present, counting the check as a use.
    pub fn touch(&self, digest: &Digest) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let tick = inner.next_tick();
        match inner.entries.get_mut(digest) {
            Some(entry) => {
                entry.tick = tick;
                true
            }
            None => false,
        }
    }

    /// Whether the blob is present and its content was checked in this process.
    pub fn is_verified(&self, digest: &Digest) -> Option<bool> {
        self.inner
            .lock()
            .unwrap()
            .entries
            .peek(digest)
            .map(|e| e.verified)
    }

    pub fn mark_verified(&self, digest: &Digest) {
        if let Some(entry) = self.inner.lock().unwrap().entries.peek_mut(digest) {
            entry.verified = true;
        }
    }

    /// The digests among `digests` that are absent. Present ones count as used and, with
    /// `pin_until`, are kept at least that long.
    pub fn missing<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
        pin_until: Option<Instant>,
    ) -> Vec<Digest> {
        let mut inner = self.inner.lock().unwrap();
        let tick = inner.next_tick();
        let mut missing = Vec::new();
        for d in digests {
            match inner.entries.get_mut(d) {
                Some(entry) => {
                    entry.tick = tick;
                    if pin_until.is_some() {
                        entry.pinned_until = entry.pinned_until.max(pin_until);
                    }
                }
                None => missing.push(*d),
            }
        }
        missing
    }

    /// Adds (or, with `release`, removes) a lease on each present digest.
    pub fn lease(&self, digests: &[Digest], release: bool) {
        let mut inner = self.inner.lock().unwrap();
        for d in digests {
            if let Some(entry) = inner.entries.peek_mut(d) {
                if release {
                    entry.leases = entry.leases.saturating_sub(1);
                } else {
                    entry.leases += 1;
                }
            }
        }
    }

    /// Least recently used blobs that may go, totalling at least `bytes` if possible.
    pub fn candidates(&self, bytes: u64) -> Vec<Candidate> {
        let inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let mut freed = 0;
        let mut out = Vec::new();
        for (digest, entry) in inner.entries.iter().rev() {
            if freed >= bytes {
                break;
            }
            if evictable(digest, entry, now) {
                freed += digest.size();
                out.push(Candidate {
                    digest: *digest,
                    tick: entry.tick,
                });
            }
        }
        out
    }

    /// Removes a candidate if nothing used, pinned or leased it since it was chosen, running
    /// `unlink` under the lock so no insert of the same blob can interleave.
    pub fn evict_with(&self, candidate: &Candidate, unlink: impl FnOnce()) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let now = Instant::now();
        let still = inner
            .entries
            .peek(&candidate.digest)
            .is_some_and(|e| e.tick == candidate.tick && evictable(&candidate.digest, e, now));
        if !still {
            return false;
        }
        unlink();
        inner.entries.pop(&candidate.digest);
        inner.total_bytes -= candidate.digest.size();
        true
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

    /// Every digest, least recently used first: the order saved across restarts.
    pub fn order(&self) -> Vec<Digest> {
        let inner = self.inner.lock().unwrap();
        inner.entries.iter().rev().map(|(d, _)| *d).collect()
    }
}

fn evictable(digest: &Digest, entry: &Entry, now: Instant) -> bool {
    // The empty blob is always present, by definition.
    digest.size() > 0 && entry.leases == 0 && entry.pinned_until.is_none_or(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use std::time::Duration;

    fn d(data: &[u8]) -> Digest {
        Digest::of(DigestFunction::Sha256, data)
    }

    #[test]
    fn insert_remove_missing() {
        let index = Index::default();
        let (a, b) = (d(b"a"), d(b"bb"));
        index.insert(a, true);
        index.insert(a, true);
        assert_eq!(index.len(), 1);
        assert_eq!(index.total_bytes(), 1);
        assert_eq!(index.missing([&a, &b], None), vec![b]);
        assert!(index.touch(&a));
        index.remove(&a);
        assert!(!index.touch(&a));
        assert_eq!(index.total_bytes(), 0);
    }

    #[test]
    fn candidates_follow_lru_and_skip_pins_and_leases() {
        let index = Index::default();
        let blobs: Vec<Digest> = (0..5u8).map(|i| d(&[i; 10])).collect();
        index.load(blobs.iter().copied());
        index.touch(&blobs[0]); // now most recent
        index.lease(&[blobs[1]], false);
        index.missing([&blobs[2]], Some(Instant::now() + Duration::from_secs(60)));
        let chosen: Vec<Digest> = index
            .candidates(u64::MAX)
            .iter()
            .map(|c| c.digest)
            .collect();
        assert_eq!(chosen, vec![blobs[3], blobs[4], blobs[0]]);
        index.lease(&[blobs[1]], true);
        assert_eq!(index.candidates(10).len(), 1);
    }

    #[test]
    fn eviction_skips_blobs_used_since_chosen() {
        let index = Index::default();
        let a = d(b"aaaa");
        index.insert(a, true);
        let c = index.candidates(1)[0];
        index.touch(&a);
        assert!(!index.evict_with(&c, || panic!("must not unlink")));
        let c = index.candidates(1)[0];
        let mut unlinked = false;
        assert!(index.evict_with(&c, || unlinked = true));
        assert!(unlinked);
        assert!(index.is_empty());
    }

    #[test]
    fn empty_blob_is_never_a_candidate() {
        let index = Index::default();
        index.insert(d(b""), true);
        assert!(index.candidates(u64::MAX).is_empty());
    }
}
