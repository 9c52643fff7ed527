//! ByteStream resource names, parsed once into a typed form.
//!
//! Reads:  `{instance}/blobs/[{function}/]{hash}/{size}` and
//!         `{instance}/compressed-blobs/{compressor}/[{function}/]{hash}/{size}`
//! Writes: `{instance}/uploads/{uuid}/blobs/...` or `.../compressed-blobs/...`, as above, with
//!         any trailing metadata segments ignored. The instance name may be empty or contain `/`.

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;

/// How blob bytes travel on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Zstd,
}

impl Compression {
    fn from_segment(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(Compression::Identity),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A parsed read or write resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub instance: String,
    /// The client's upload id; present only for write resource names.
    pub upload_id: Option<String>,
    pub compression: Compression,
    pub digest: Digest,
}

/// Words that can never be an instance-name segment, because they start the blob part (the
/// configuration rejects instance names that contain one).
pub const RESERVED: &[&str] = &[
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
];

impl ResourceName {
    pub fn parse_read(name: &str) -> Result<Self, Error> {
        let segments: Vec<&str> = name.split('/').collect();
        let start = segments
            .iter()
            .position(|s| *s == "blobs" || *s == "compressed-blobs")
            .ok_or_else(|| bad(name, "expected `{instance}/blobs/{hash}/{size}`"))?;
        let instance = instance_of(name, &segments[..start])?;
        let (compression, digest, rest) = parse_blob_part(name, &segments[start..])?;
        if !rest.is_empty() {
            return Err(bad(name, "unexpected segments after the size"));
        }
        Ok(ResourceName {
            instance,
            upload_id: None,
            compression,
            digest,
        })
    }

    pub fn parse_write(name: &str) -> Result<Self, Error> {
        let segments: Vec<&str> = name.split('/').collect();
        let start = segments
            .iter()
            .position(|s| *s == "uploads")
            .ok_or_else(|| {
                bad(
                    name,
                    "expected `{instance}/uploads/{uuid}/blobs/{hash}/{size}`",
                )
            })?;
        let instance = instance_of(name, &segments[..start])?;
        let upload_id = match segments.get(start + 1) {
            Some(id) if !id.is_empty() && !RESERVED.contains(id) => id.to_string(),
            _ => return Err(bad(name, "missing upload id after `uploads/`")),
        };
        // Whatever follows the size is client metadata that the spec tells servers to ignore.
        let (compression, digest, _metadata) = parse_blob_part(name, &segments[start + 2..])?;
        Ok(ResourceName {
            instance,
            upload_id: Some(upload_id),
            compression,
            digest,
        })
    }
}

fn bad(name: &str, why: &str) -> Error {
    Error::BadInput(format!("invalid resource name {name:?}: {why}"))
}

fn instance_of(name: &str, segments: &[&str]) -> Result<String, Error> {
    if segments.iter().any(|s| RESERVED.contains(s)) {
        return Err(bad(name, "the instance name contains a reserved word"));
    }
    Ok(segments.join("/"))
}

/// Parses `blobs/[fn/]hash/size...` or `compressed-blobs/comp/[fn/]hash/size...`, returning the
/// segments left after the size.
fn parse_blob_part<'a>(
    name: &str,
    segments: &'a [&'a str],
) -> Result<(Compression, Digest, &'a [&'a str]), Error> {
    let (compression, rest) = match segments.first() {
        Some(&"blobs") => (Compression::Identity, &segments[1..]),
        Some(&"compressed-blobs") => {
            let comp = segments
                .get(1)
                .ok_or_else(|| bad(name, "missing compressor after `compressed-blobs/`"))?;
            let compression = Compression::from_segment(comp).ok_or_else(|| {
                bad(
                    name,
                    &format!("unsupported compressor {comp:?}; supported: zstd, identity"),
                )
            })?;
            (compression, &segments[2..])
        }
        _ => return Err(bad(name, "expected `blobs/` or `compressed-blobs/`")),
    };
    let (function, rest) = match rest.first().and_then(|s| DigestFunction::from_name(s)) {
        Some(f) if rest.len() >= 3 => (Some(f), &rest[1..]),
        _ => (None, rest),
    };
    let (hash, size) = match rest {
        [hash, size, ..] => (*hash, *size),
        _ => return Err(bad(name, "expected `{hash}/{size}`")),
    };
    let function = match function {
        Some(f) => f,
        None => DigestFunction::from_hash_len(hash.len())
            .ok_or_else(|| bad(name, &format!("hash {hash:?} has no supported length")))?,
    };
    let size: i64 = size.parse().map_err(|_| {
        bad(
            name,
            &format!("size {size:?} is not a non-negative integer"),
        )
    })?;
    let digest = Digest::parse(function, hash, size).map_err(|e| bad(name, &e.to_string()))?;
    Ok((compression, digest, &rest[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn read_names() {
        let r = ResourceName::parse_read(&format!("blobs/{H}/0")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.compression, Compression::Identity);
        assert_eq!(r.digest.hash_hex(), H);

        let r = ResourceName::parse_read(&format!("a/b/compressed-blobs/zstd/{H}/0")).unwrap();
        assert_eq!(r.instance, "a/b");
        assert_eq!(r.compression, Compression::Zstd);

        let r = ResourceName::parse_read(&format!("main/blobs/sha256/{H}/0")).unwrap();
        assert_eq!(r.instance, "main");
        assert_eq!(r.digest.function(), DigestFunction::Sha256);

        let r = ResourceName::parse_read(&format!("blobs/blake3/{H}/0")).unwrap();
        assert_eq!(r.digest.function(), DigestFunction::Blake3);
        let r =
            ResourceName::parse_write(&format!("i/uploads/u/compressed-blobs/zstd/blake3/{H}/0"))
                .unwrap();
        assert_eq!(r.digest.function(), DigestFunction::Blake3);
    }

    #[test]
    fn write_names() {
        let r = ResourceName::parse_write(&format!("uploads/u1/blobs/{H}/0")).unwrap();
        assert_eq!(r.instance, "");
        assert_eq!(r.upload_id.as_deref(), Some("u1"));

        let r =
            ResourceName::parse_write(&format!("inst/uploads/u2/blobs/{H}/0/some/meta")).unwrap();
        assert_eq!(r.instance, "inst");

        let r =
            ResourceName::parse_write(&format!("uploads/u3/compressed-blobs/zstd/{H}/0")).unwrap();
        assert_eq!(r.compression, Compression::Zstd);
    }

    #[test]
    fn malformed_names() {
        for name in [
            String::new(),
            "blobs".to_string(),
            format!("blobs/{H}"),
            format!("blobs/{H}/-1"),
            format!("blobs/{H}/x"),
            format!("blobs/{}/0", &H[2..]),
            format!("blobs/{H}/0/extra"),
            format!("compressed-blobs/lz4/{H}/0"),
            format!("uploads/blobs/{H}/0"),
            format!("blobs/{}/0", H.to_uppercase()),
        ] {
            assert!(
                ResourceName::parse_read(&name).is_err()
                    && ResourceName::parse_write(&name).is_err(),
                "{name} should be rejected"
            );
        }
        assert!(ResourceName::parse_write(&format!("uploads/u/blobs/{H}")).is_err());
    }
}
