//! SpliceBlob: assembles a blob from chunks already in the CAS. The result is hashed as it
//! is written and becomes visible only if it matches the digest the client named, so a
//! wrong chunk list can never put a wrong blob under that name.

use std::io::{Read, Write};

use super::Chunker;
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::storage::Cas;

/// Chunks named in a NOT_FOUND message, at most.
const NAMED_MISSING: usize = 5;

impl Chunker {
    /// Stores `blob` as the concatenation of `chunks`; a no-op if it is already stored.
    pub async fn splice(&self, blob: Digest, chunks: Vec<Digest>) -> Result<Digest, Error> {
        let total = chunks
            .iter()
            .try_fold(0u64, |sum, c| sum.checked_add(c.size()))
            .unwrap_or(u64::MAX);
        if total != blob.size() {
            return Err(Error::BadInput(format!(
                "the {} chunks add up to {total} bytes, but blob {blob} is {} bytes",
                chunks.len(),
                blob.size()
            )));
        }
        if self.store.is_present(&blob).await? {
            self.cas.pin(chunks.iter());
            return Ok(blob);
        }
        let mut distinct = chunks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let missing = self.store.ensure_local(&distinct).await;
        if !missing.is_empty() {
            return Err(missing_chunks(&missing));
        }
        // Held from here, so eviction cannot take a chunk just fetched from the bucket.
        let lease = self.cas.lease(distinct.clone());
        let cas = self.cas.clone();
        blocking(move || {
            let _lease = lease;
            concatenate(&cas, &blob, &chunks, &distinct)
        })
        .await?;
        self.store.finish_upload(&blob, None).await?;
        Ok(blob)
    }
}

/// NOT_FOUND naming the first few chunks the CAS lacks.
fn missing_chunks(missing: &[Digest]) -> Error {
    let named: Vec<String> = missing
        .iter()
        .take(NAMED_MISSING)
        .map(Digest::to_string)
        .collect();
    let more = match missing.len().saturating_sub(NAMED_MISSING) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Error::Absent(format!(
        "{} chunk(s) are not in the CAS: {}{more}; upload them before SpliceBlob",
        missing.len(),
        named.join(", ")
    ))
}

/// Writes the chunks, in order, into a new blob checked against `blob`. Content that does
/// not match is the client's list unless a stored chunk turns out damaged.
fn concatenate(
    cas: &Cas,
    blob: &Digest,
    chunks: &[Digest],
    distinct: &[Digest],
) -> Result<(), Error> {
    match write_chunks(cas, blob, chunks) {
        Err(Error::BadInput(why)) => match damaged_chunks(cas, distinct) {
            // Not the client's list but the server's copies: they go, and the client's next
            // upload of them is stored afresh.
            damaged if !damaged.is_empty() => Err(missing_chunks(&damaged)),
            _ => Err(Error::BadInput(format!(
                "the chunks do not assemble blob {blob}: {why}"
            ))),
        },
        other => other,
    }
}

fn write_chunks(cas: &Cas, blob: &Digest, chunks: &[Digest]) -> Result<(), Error> {
    let mut writer = cas.writer(blob)?;
    let mut buf = vec![0u8; 1 << 20];
    for chunk in chunks {
        let Some(mut file) = cas.open_blob(chunk)? else {
            return Err(missing_chunks(std::slice::from_ref(chunk)));
        };
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io(format!("reading chunk {chunk}"), e))?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput => {
                    Error::BadInput(format!("they hold more than its {} bytes", blob.size()))
                }
                _ => Error::io(format!("writing blob {blob}"), e),
            })?;
        }
    }
    writer.commit().map(|_| ())
}

/// Chunks whose stored copy no longer hashes to its name; each is removed from the CAS.
fn damaged_chunks(cas: &Cas, distinct: &[Digest]) -> Vec<Digest> {
    distinct
        .iter()
        .filter(|chunk| {
            match crate::storage::disk::hash_file(&cas.blob_path(chunk), chunk.function()) {
                Ok(actual) if actual == **chunk => false,
                Ok(actual) => {
                    cas.report_corrupt(chunk, &actual);
                    true
                }
                Err(_) => {
                    cas.discard(chunk);
                    true
                }
            }
        })
        .copied()
        .collect()
}
