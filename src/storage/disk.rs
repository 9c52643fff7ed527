//! File-level helpers of the store: listing the blob files found at start-up, clearing the
//! temp directory of a crashed run, and hashing a file.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;

/// Hashes a file's whole content.
pub fn hash_file(path: &Path, function: DigestFunction) -> io::Result<Digest> {
    hash_open_file(&File::open(path)?, function)
}

/// Hashes an open file from its current position, which must be the start.
pub fn hash_open_file(file: &File, function: DigestFunction) -> io::Result<Digest> {
    hash_reader(file, function, file.metadata()?.len())
}

/// Hashes `reader`, which must hold `expected_size` bytes (GITSHA1 hashes the size first);
/// one that holds another amount (a file that changed while read) is `InvalidData`.
pub fn hash_reader(
    mut reader: impl Read,
    function: DigestFunction,
    expected_size: u64,
) -> io::Result<Digest> {
    let mut hasher = function.hasher(expected_size);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            if size != expected_size {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("held {size} bytes where {expected_size} were expected"),
                ));
            }
            return Ok(hasher.finish(size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

pub fn list_shard(
    function: DigestFunction,
    shard_dir: &Path,
    out: &mut HashSet<Digest>,
) -> Result<(), Error> {
    let entries = fs::read_dir(shard_dir)
        .map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", shard_dir.display()), e))?;
        let name = entry.file_name();
        match name
            .to_str()
            .and_then(|n| parse_blob_file_name(function, n))
        {
            Some(digest) => {
                out.insert(digest);
            }
            None => {
                tracing::warn!(path = %entry.path().display(), "ignoring a file that is not a blob")
            }
        }
    }
    Ok(())
}

fn parse_blob_file_name(function: DigestFunction, name: &str) -> Option<Digest> {
    let (hash, size) = name.split_once('-')?;
    Digest::parse(function, hash, size.parse().ok()?).ok()
}

pub fn clean_tmp(tmp_dir: &Path) -> Result<(), Error> {
    let entries = fs::read_dir(tmp_dir)
        .map_err(|e| Error::io(format!("listing {}", tmp_dir.display()), e))?;
    let mut removed = 0usize;
    for entry in entries.flatten() {
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover temp file")
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed leftover temp files from an earlier run");
    }
    Ok(())
}
