//! Subresource Integrity checksums, as carried by the `checksum.sri` qualifier
//! (`sha256-<base64>`, W3C SRI): parsed once before a download, checked after it.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::Digest as _;

use crate::error::Error;

/// The SRI hash algorithms rexd checks, weakest first (SRI picks the strongest one listed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha384" => Some(Algorithm::Sha384),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }

    pub fn hasher(self) -> SriHasher {
        match self {
            Algorithm::Sha256 => SriHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => SriHasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => SriHasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A parsed `checksum.sri` value: the strongest algorithm it names and the hashes it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sri {
    pub algorithm: Algorithm,
    expected: Vec<Vec<u8>>,
}

/// Standard base64, padded or not (SRI values are written both ways in the wild).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl Sri {
    /// Parses whitespace-separated `alg-base64[?options]` entries. Unknown algorithms are
    /// skipped, as SRI says; a value naming no supported one is INVALID_ARGUMENT.
    pub fn parse(value: &str) -> Result<Sri, Error> {
        let invalid = |why: String| Error::BadInput(format!("checksum.sri {value:?}: {why}"));
        let mut entries = Vec::new();
        for entry in value.split_whitespace() {
            let entry = entry.split_once('?').map_or(entry, |(e, _)| e);
            let Some((alg, b64)) = entry.split_once('-') else {
                return Err(invalid(format!("{entry:?} is not of the form alg-base64")));
            };
            let Some(algorithm) = Algorithm::from_name(alg) else {
                continue;
            };
            let hash = BASE64
                .decode(b64)
                .map_err(|e| invalid(format!("{entry:?} is not valid base64: {e}")))?;
            if hash.len() != algorithm.len() {
                return Err(invalid(format!(
                    "a {alg} hash is {} bytes, this one {}",
                    algorithm.len(),
                    hash.len()
                )));
            }
            entries.push((algorithm, hash));
        }
        let Some(strongest) = entries.iter().map(|(a, _)| *a).max() else {
            return Err(invalid(
                "names no supported algorithm (sha256, sha384 or sha512)".into(),
            ));
        };
        Ok(Sri {
            algorithm: strongest,
            expected: entries
                .into_iter()
                .filter(|(a, _)| *a == strongest)
                .map(|(_, h)| h)
                .collect(),
        })
    }

    /// Whether `actual` (a hash by [`Sri::algorithm`]) is one the value accepts; ABORTED (a
    /// failed consistency check, in the Remote Asset API's words) naming both otherwise.
    pub fn check(&self, what: &str, actual: &[u8]) -> Result<(), Error> {
        if self.expected.iter().any(|e| e == actual) {
            return Ok(());
        }
        let show = |h: &[u8]| format!("{}-{}", self.algorithm.name(), BASE64.encode(h));
        let wanted: Vec<String> = self.expected.iter().map(|h| show(h)).collect();
        Err(Error::Conflict(format!(
            "checksum mismatch for {what}: checksum.sri expects {}, the content has {}",
            wanted.join(" or "),
            show(actual)
        )))
    }
}

/// An incremental hasher for one SRI algorithm.
pub enum SriHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl SriHasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            SriHasher::Sha256(h) => h.update(data),
            SriHasher::Sha384(h) => h.update(data),
            SriHasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            SriHasher::Sha256(h) => h.finalize().to_vec(),
            SriHasher::Sha384(h) => h.finalize().to_vec(),
            SriHasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sri_of(alg: Algorithm, data: &[u8]) -> String {
        let mut h = alg.hasher();
        h.update(data);
        format!("{}-{}", alg.name(), BASE64.encode(h.finish()))
    }

    fn hash(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut h = alg.hasher();
        h.update(data);
        h.finish()
    }

    #[test]
    fn checks_each_algorithm() {
        for alg in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            let sri = Sri::parse(&sri_of(alg, b"hello")).unwrap();
            assert_eq!(sri.algorithm, alg);
            sri.check("x", &hash(alg, b"hello")).unwrap();
            let err = sri.check("x", &hash(alg, b"hellO")).unwrap_err();
            assert!(matches!(err, Error::Conflict(_)), "{err}");
            assert!(err.to_string().contains(&sri_of(alg, b"hello")), "{err}");
        }
    }

    #[test]
    fn strongest_algorithm_wins_and_unknown_ones_are_skipped() {
        let value = format!(
            "md5-AAAA {} {}?opt",
            sri_of(Algorithm::Sha256, b"a"),
            sri_of(Algorithm::Sha512, b"a")
        );
        let sri = Sri::parse(&value).unwrap();
        assert_eq!(sri.algorithm, Algorithm::Sha512);
        sri.check("x", &hash(Algorithm::Sha512, b"a")).unwrap();
    }

    #[test]
    fn unpadded_base64_is_accepted() {
        let padded = sri_of(Algorithm::Sha256, b"a");
        let sri = Sri::parse(padded.trim_end_matches('=')).unwrap();
        sri.check("x", &hash(Algorithm::Sha256, b"a")).unwrap();
    }

    #[test]
    fn bad_values_are_invalid_arguments() {
        for bad in ["", "md5-AAAA", "sha256-!!!", "sha256-AAAA", "nodash"] {
            let err = Sri::parse(bad).unwrap_err();
            assert!(matches!(err, Error::BadInput(_)), "{bad}: {err}");
        }
    }
}
