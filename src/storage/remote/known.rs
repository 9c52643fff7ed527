//! What this frontend knows to be in the bucket, and since when: a bounded LRU from object
//! key to the object's last-modified time. It answers FindMissingBlobs for blobs found
//! before without a HEAD, and tells when an object in use is due for a refresh.
//!
//! An entry stays true while the object is younger than the bucket's maximum age, since
//! only the age-based sweep deletes objects; without a maximum age it stays true until the
//! LRU drops it.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lru::LruCache;

/// What the record says about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// In the bucket, and young enough to need nothing.
    Present,
    /// In the bucket, but past half its maximum age: in use, so due for a refresh.
    Aging,
    /// Not recorded, or recorded so long ago that it may have been swept.
    Unknown,
}

pub struct KnownObjects {
    entries: Mutex<LruCache<String, SystemTime>>,
    max_age: Option<Duration>,
}

impl KnownObjects {
    pub fn new(capacity: usize, max_age: Option<Duration>) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        KnownObjects {
            entries: Mutex::new(LruCache::new(capacity)),
            max_age,
        }
    }

    pub fn record(&self, key: &str, last_modified: SystemTime) {
        self.entries
            .lock()
            .expect("known-objects lock")
            .put(key.to_string(), last_modified);
    }

    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("known-objects lock").pop(key);
    }

    pub fn check(&self, key: &str, now: SystemTime) -> Known {
        let Some(modified) = self
            .entries
            .lock()
            .expect("known-objects lock")
            .get(key)
            .copied()
        else {
            return Known::Unknown;
        };
        let Some(max_age) = self.max_age else {
            return Known::Present;
        };
        let age = now.duration_since(modified).unwrap_or_default();
        if age >= max_age {
            Known::Unknown
        } else if age >= max_age / 2 {
            Known::Aging
        } else {
            Known::Present
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("known-objects lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_bound() {
        let day = Duration::from_secs(86_400);
        let known = KnownObjects::new(2, Some(10 * day));
        let t0 = SystemTime::UNIX_EPOCH + 100 * day;
        known.record("a", t0);
        assert_eq!(known.check("a", t0 + day), Known::Present);
        assert_eq!(known.check("a", t0 + 6 * day), Known::Aging);
        assert_eq!(known.check("a", t0 + 10 * day), Known::Unknown);
        known.record("b", t0);
        known.record("c", t0);
        assert_eq!(known.len(), 2, "the record is bounded");
        assert_eq!(
            known.check("a", t0),
            Known::Unknown,
            "the oldest went first"
        );

        let forever = KnownObjects::new(4, None);
        forever.record("a", t0);
        assert_eq!(forever.check("a", t0 + 1000 * day), Known::Present);
    }
}
