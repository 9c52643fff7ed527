//! The layout of rexd's objects in the bucket, in one place:
//! - `{prefix}/cas/{function}/{hash}-{size}`: one object per blob, immutable;
//! - `{prefix}/ac/{instance}/{function}/{hash}-{size}`: one encoded `ActionResult` per
//!   action, where the empty instance name is written `_`;
//! - `{prefix}/assets/{key}`: one Remote Asset record, named by the hash of its identity.
//!
//! Every frontend pointed at the same bucket and prefix derives the same keys, which is what
//! lets them share one cache.

use object_store::path::Path;

use crate::digest::Digest;

/// The segment the empty instance name is stored under; config refuses an instance named so
/// when a remote tier is on, so no two instances share it.
pub const EMPTY_INSTANCE: &str = crate::config::EMPTY_INSTANCE_KEY;

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: Path,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: Path::from(prefix),
        }
    }

    /// Everything rexd owns in the bucket; what a sweep lists.
    pub fn root(&self) -> &Path {
        &self.prefix
    }

    fn under(&self, parts: &[&str]) -> Path {
        let mut path = self.prefix.clone();
        for part in parts {
            for segment in part.split('/').filter(|s| !s.is_empty()) {
                path = path.child(segment);
            }
        }
        path
    }

    pub fn blob(&self, digest: &Digest) -> Path {
        self.under(&[
            "cas",
            digest.function().name(),
            &format!("{}-{}", digest.hash_hex(), digest.size()),
        ])
    }

    pub fn action_result(&self, instance: &str, digest: &Digest) -> Path {
        let instance = if instance.is_empty() {
            EMPTY_INSTANCE
        } else {
            instance
        };
        self.under(&[
            "ac",
            instance,
            digest.function().name(),
            &format!("{}-{}", digest.hash_hex(), digest.size()),
        ])
    }

    pub fn asset(&self, stem: &str) -> Path {
        self.under(&["assets", stem])
    }

    /// A key that is never written: HEADing it tells whether the store answers at all.
    pub fn probe(&self) -> Path {
        self.under(&["rexd-probe"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn layout_matches_the_documented_one() {
        let d = Digest::of(DigestFunction::Sha256, b"hello");
        let keys = Keys::new("team/cache");
        let hash = d.hash_hex();
        assert_eq!(
            keys.blob(&d).as_ref(),
            format!("team/cache/cas/sha256/{hash}-5")
        );
        assert_eq!(
            keys.action_result("", &d).as_ref(),
            format!("team/cache/ac/_/sha256/{hash}-5")
        );
        assert_eq!(
            keys.action_result("ci/linux", &d).as_ref(),
            format!("team/cache/ac/ci/linux/sha256/{hash}-5")
        );
        assert_eq!(Keys::new("").asset("ab12").as_ref(), "assets/ab12");
    }
}
