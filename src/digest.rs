//! Validated content digests. Every digest that enters rexd is parsed here once, at the edge;
//! the rest of the crate only ever sees a [`Digest`] that is known to be well formed.

use std::fmt;

use sha2::Digest as _;

use crate::error::Error;
use crate::proto::remote_execution as re;

/// The hash functions rexd can verify content with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    /// Several times faster than SHA-256; always named explicitly in resource names.
    Blake3,
    /// Git's blob hash: SHA-1 over `blob <size>\0` and the content, so a file's digest is its
    /// Git object id. 20-byte hashes; always named explicitly, never inferred from length.
    GitSha1,
}

impl DigestFunction {
    /// Every function the server offers, in the order Capabilities lists them.
    /// New functions go at the end: the saved eviction order names them by position.
    pub const ALL: &'static [DigestFunction] = &[
        DigestFunction::Sha256,
        DigestFunction::Blake3,
        DigestFunction::GitSha1,
    ];

    /// Maps a request's `digest_function` field. UNKNOWN (0) means "the default", SHA-256, as the
    /// spec asks of servers that support it.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        match re::digest_function::Value::try_from(value) {
            Ok(re::digest_function::Value::Unknown | re::digest_function::Value::Sha256) => {
                Ok(DigestFunction::Sha256)
            }
            Ok(re::digest_function::Value::Blake3) => Ok(DigestFunction::Blake3),
            Ok(re::digest_function::Value::Gitsha1) => Ok(DigestFunction::GitSha1),
            Ok(other) => Err(Error::BadInput(format!(
                "digest function {} is not supported; this server supports: {}",
                other.as_str_name(),
                Self::supported_names()
            ))),
            Err(_) => Err(Error::BadInput(format!(
                "unknown digest function value {value}"
            ))),
        }
    }

    pub fn to_proto(self) -> re::digest_function::Value {
        match self {
            DigestFunction::Sha256 => re::digest_function::Value::Sha256,
            DigestFunction::Blake3 => re::digest_function::Value::Blake3,
            DigestFunction::GitSha1 => re::digest_function::Value::Gitsha1,
        }
    }

    /// Lower-case name, as used in resource names and on-disk paths.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
            DigestFunction::GitSha1 => "gitsha1",
        }
    }

    /// Length in bytes of this function's hashes.
    pub fn hash_len(self) -> usize {
        match self {
            DigestFunction::Sha256 | DigestFunction::Blake3 => 32,
            DigestFunction::GitSha1 => 20,
        }
    }

    /// Parses the lower-case name used in ByteStream resource names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Picks the function from the hash length, for resource names that omit it (the spec
    /// allows omitting it only for the older functions, so BLAKE3 and GITSHA1 are never
    /// inferred).
    pub fn from_hash_len(len: usize) -> Option<Self> {
        match len {
            64 => Some(DigestFunction::Sha256),
            _ => None,
        }
    }

    /// A hasher for content of `size` bytes: GITSHA1 hashes the size before the content, so
    /// it must be known up front; the other functions ignore it.
    pub fn hasher(self, size: u64) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            DigestFunction::GitSha1 => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1 {
                    hasher: h,
                    declared: size,
                }
            }
        }
    }

    fn supported_names() -> String {
        Self::ALL
            .iter()
            .map(|f| f.name().to_uppercase())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Room for the longest hash rexd stores; shorter ones are zero-padded.
pub const HASH_LEN: usize = 32;

/// A validated digest: function, raw hash bytes and size. `Copy`, so index keys cost nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    function: DigestFunction,
    /// The hash in its first `function.hash_len()` bytes, zeros after.
    hash: [u8; HASH_LEN],
    size: u64,
}

impl Digest {
    /// Parses a hex hash and a size, as found in protos and resource names.
    pub fn parse(function: DigestFunction, hash: &str, size: i64) -> Result<Self, Error> {
        if size < 0 {
            return Err(Error::BadInput(format!(
                "digest {hash}/{size}: size must not be negative"
            )));
        }
        let bytes = hash.as_bytes();
        let len = function.hash_len();
        if bytes.len() != len * 2 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::BadInput(format!(
                "digest {hash:?}/{size}: a {} hash must be {} lower-case hex characters",
                function.name(),
                len * 2
            )));
        }
        let mut raw = [0u8; HASH_LEN];
        hex::decode_to_slice(bytes, &mut raw[..len]).expect("validated hex");
        Ok(Digest {
            function,
            hash: raw,
            size: size as u64,
        })
    }

    /// Validates a digest taken from a request.
    pub fn from_proto(function: DigestFunction, digest: &re::Digest) -> Result<Self, Error> {
        Self::parse(function, &digest.hash, digest.size_bytes)
    }

    /// Every digest of a request's list, or the first one that is not valid.
    pub fn all_from_proto(
        function: DigestFunction,
        digests: &[re::Digest],
    ) -> Result<Vec<Self>, Error> {
        digests
            .iter()
            .map(|d| Self::from_proto(function, d))
            .collect()
    }

    /// Like [`Digest::from_proto`], but a missing message field is an error naming `what`.
    pub fn from_required(
        function: DigestFunction,
        digest: Option<&re::Digest>,
        what: &str,
    ) -> Result<Self, Error> {
        let digest = digest.ok_or_else(|| Error::BadInput(format!("{what} digest is missing")))?;
        Self::from_proto(function, digest)
    }

    /// The digest of `data`.
    pub fn of(function: DigestFunction, data: &[u8]) -> Self {
        let mut hasher = function.hasher(data.len() as u64);
        hasher.update(data);
        hasher.finish(data.len() as u64)
    }

    pub fn empty(function: DigestFunction) -> Self {
        Self::of(function, &[])
    }

    pub fn function(&self) -> DigestFunction {
        self.function
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hash_bytes(&self) -> &[u8] {
        &self.hash[..self.function.hash_len()]
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash_bytes())
    }

    pub fn is_empty_blob(&self) -> bool {
        self.size == 0
    }

    /// `blobs/[{function}/]{hash}/{size}`: the function is named only where the spec says it
    /// cannot be inferred from the hash length.
    pub fn blob_path(&self) -> String {
        match self.function {
            DigestFunction::Sha256 => format!("blobs/{self}"),
            other => format!("blobs/{}/{self}", other.name()),
        }
    }

    pub fn to_proto(&self) -> re::Digest {
        re::Digest {
            hash: self.hash_hex(),
            size_bytes: self.size as i64,
        }
    }
}

impl fmt::Display for Digest {
    /// `hash/size`, the form used in resource names and log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.function.name(), self)
    }
}

/// An incremental hasher for any supported function.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
    /// `declared` is the size hashed into the header.
    GitSha1 {
        hasher: sha1::Sha1,
        declared: u64,
    },
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::GitSha1 { hasher, .. } => hasher.update(data),
        }
    }

    /// Finishes into a digest of `size` bytes (the caller counts what it fed in).
    pub fn finish(self, size: u64) -> Digest {
        let mut hash = [0u8; HASH_LEN];
        match self {
            Hasher::Sha256(h) => Digest {
                function: DigestFunction::Sha256,
                hash: h.finalize().into(),
                size,
            },
            Hasher::Blake3(h) => Digest {
                function: DigestFunction::Blake3,
                hash: *h.finalize().as_bytes(),
                size,
            },
            Hasher::GitSha1 { hasher, declared } => {
                hash[..20].copy_from_slice(&hasher.finalize());
                if declared != size {
                    // The header named another size: no content of `size` bytes has this
                    // hash, so flip it to be sure it never verifies.
                    hash[0] ^= 0xff;
                }
                Digest {
                    function: DigestFunction::GitSha1,
                    hash,
                    size,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_digest_is_well_known() {
        let d = Digest::empty(DigestFunction::Sha256);
        assert_eq!(d.hash_hex(), EMPTY_SHA256);
        assert_eq!(d.size(), 0);
        assert!(d.is_empty_blob());
    }

    #[test]
    fn blake3_empty_digest() {
        let d = Digest::empty(DigestFunction::Blake3);
        assert_eq!(
            d.hash_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_ne!(d, Digest::empty(DigestFunction::Sha256));
    }

    #[test]
    fn gitsha1_is_the_git_object_id() {
        // `git hash-object` of an empty file and of "hello\n".
        let empty = Digest::empty(DigestFunction::GitSha1);
        assert_eq!(empty.hash_hex(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        let hello = Digest::of(DigestFunction::GitSha1, b"hello\n");
        assert_eq!(hello.hash_hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(hello.hash_bytes().len(), 20);
        let parsed = Digest::parse(DigestFunction::GitSha1, &hello.hash_hex(), 6).unwrap();
        assert_eq!(parsed, hello);
        // Streamed in pieces, it is the same; a size other than the declared one never is.
        let mut h = DigestFunction::GitSha1.hasher(6);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(h.finish(6), hello);
        let mut short = DigestFunction::GitSha1.hasher(6);
        short.update(b"hello");
        assert_ne!(
            short.finish(5),
            Digest::of(DigestFunction::GitSha1, b"hello")
        );
        // A 64-character hash is not a GITSHA1 one, nor is a 40-character one inferred.
        assert!(Digest::parse(DigestFunction::GitSha1, EMPTY_SHA256, 0).is_err());
        assert_eq!(DigestFunction::from_hash_len(40), None);
        assert_eq!(
            DigestFunction::from_proto(10).unwrap(),
            DigestFunction::GitSha1
        );
    }

    #[test]
    fn parse_round_trips() {
        let d = Digest::parse(DigestFunction::Sha256, EMPTY_SHA256, 0).unwrap();
        assert_eq!(d, Digest::empty(DigestFunction::Sha256));
        assert_eq!(d.to_string(), format!("{EMPTY_SHA256}/0"));
    }

    #[test]
    fn parse_rejects_bad_input() {
        let upper = EMPTY_SHA256.to_uppercase();
        for (hash, size) in [
            (EMPTY_SHA256, -1),
            (&EMPTY_SHA256[1..], 0),
            (upper.as_str(), 0),
            ("zz", 0),
            ("", 0),
        ] {
            let err = Digest::parse(DigestFunction::Sha256, hash, size).unwrap_err();
            assert!(matches!(err, Error::BadInput(_)), "{hash}/{size}");
        }
    }

    #[test]
    fn function_from_proto() {
        assert_eq!(
            DigestFunction::from_proto(0).unwrap(),
            DigestFunction::Sha256
        );
        assert_eq!(
            DigestFunction::from_proto(1).unwrap(),
            DigestFunction::Sha256
        );
        assert_eq!(
            DigestFunction::from_proto(9).unwrap(),
            DigestFunction::Blake3
        );
        assert!(DigestFunction::from_proto(3).is_err());
        assert!(
            DigestFunction::from_proto(4).is_err(),
            "plain SHA-1 is not offered"
        );
        assert!(DigestFunction::from_proto(999).is_err());
    }
}
