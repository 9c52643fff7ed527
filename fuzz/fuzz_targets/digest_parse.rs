//! `Digest::parse` on arbitrary input: the first 8 bytes are the size (little-endian `i64`),
//! the rest is the hash string. It must never panic, must accept exactly the function's hash
//! length in lower-case hex with a non-negative size, and an accepted digest must round-trip
//! through `to_proto`/`from_proto` and through its `Display` form.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rexd::Error;
use rexd::digest::{Digest, DigestFunction};

fuzz_target!(|data: &[u8]| {
    let Some((size, hash)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = i64::from_le_bytes(*size);
    let Ok(hash) = std::str::from_utf8(hash) else {
        return;
    };
    let lower_hex = hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));

    for &function in DigestFunction::ALL {
        let well_formed = size >= 0 && lower_hex && hash.len() == function.hash_len() * 2;
        // The function's own mappings are inverse to each other.
        assert_eq!(
            DigestFunction::from_proto(function.to_proto() as i32).ok(),
            Some(function)
        );
        assert_eq!(DigestFunction::from_name(function.name()), Some(function));

        let digest = match Digest::parse(function, hash, size) {
            Ok(digest) => digest,
            Err(err) => {
                assert!(!well_formed, "{function:?} rejected {hash:?}/{size}: {err}");
                assert!(matches!(err, Error::BadInput(_)), "{err:?}");
                let _ = err.to_string();
                continue;
            }
        };
        assert!(well_formed, "{function:?} accepted {hash:?}/{size}");
        assert_eq!(digest.function(), function);
        assert_eq!(digest.hash_hex(), hash);
        assert_eq!(digest.size(), size as u64);
        assert_eq!(digest.is_empty_blob(), size == 0);

        let proto = digest.to_proto();
        assert_eq!(proto.hash, hash);
        assert_eq!(proto.size_bytes, size);
        assert_eq!(Digest::from_proto(function, &proto).unwrap(), digest);

        let shown = digest.to_string();
        assert_eq!(shown, format!("{hash}/{size}"));
        let (h, s) = shown.split_once('/').unwrap();
        assert_eq!(
            Digest::parse(function, h, s.parse().unwrap()).unwrap(),
            digest
        );
        assert!(digest.blob_path().ends_with(&shown));
        let _ = format!("{digest:?}");
    }
});
