//! ByteStream resource names from arbitrary UTF-8. `parse_read` and `parse_write` must never
//! panic; a name they accept, rendered again from the parsed parts, must parse to the same
//! instance, upload id, compression and digest. No name is both a read and a write name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rexd::resource::{Compression, ResourceName};

fuzz_target!(|name: &str| {
    let read = ResourceName::parse_read(name);
    let write = ResourceName::parse_write(name);
    assert!(
        read.is_err() || write.is_err(),
        "{name:?} parsed as both a read and a write name"
    );
    for parsed in [read, write] {
        let Ok(parsed) = parsed else { continue };
        assert!(name.starts_with(&parsed.instance), "{name:?} -> {parsed:?}");
        assert!(
            name.contains(&parsed.digest.hash_hex()),
            "{name:?} -> {parsed:?}"
        );
        let rendered = render(&parsed);
        let again = match parsed.upload_id {
            None => ResourceName::parse_read(&rendered),
            Some(_) => ResourceName::parse_write(&rendered),
        };
        match again {
            Ok(again) => assert_eq!(again, parsed, "{name:?} re-rendered as {rendered:?}"),
            Err(err) => panic!("{name:?} re-rendered as {rendered:?}, which fails: {err}"),
        }
    }
});

/// The canonical form of a parsed name: `[{instance}/][uploads/{id}/]{blob part}`.
fn render(r: &ResourceName) -> String {
    // `blobs/[{function}/]{hash}/{size}`
    let blob_path = r.digest.blob_path();
    let blob = match r.compression {
        Compression::Identity => blob_path,
        Compression::Zstd => {
            format!("compressed-blobs/zstd/{}", &blob_path["blobs/".len()..])
        }
    };
    let mut out = String::new();
    if !r.instance.is_empty() {
        out.push_str(&r.instance);
        out.push('/');
    }
    if let Some(id) = &r.upload_id {
        out.push_str("uploads/");
        out.push_str(id);
        out.push('/');
    }
    out.push_str(&blob);
    out
}
