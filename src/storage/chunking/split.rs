//! SplitBlob: cuts a stored blob into FastCDC chunks, stores the chunks the CAS lacks, and
//! remembers the list. The blob is read once, sequentially, on the blocking pool, and is
//! hashed as it is read so that chunks are never cut from a damaged copy.

use std::sync::Arc;

use bytes::Bytes;

use super::Chunker;
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::storage::Cas;

/// New chunks are written in groups of about this many bytes, one filesystem sync each.
const WRITE_GROUP_BYTES: usize = 8 * 1024 * 1024;

impl Chunker {
    /// The chunks of `blob`, all present in the CAS when this returns.
    pub async fn split(&self, blob: Digest) -> Result<Arc<[Digest]>, Error> {
        let threshold = u64::from(self.options.fast_cdc.max());
        if blob.size() < threshold {
            return Err(Error::Absent(format!(
                "blob {blob} is {} bytes, under the {threshold}-byte chunking threshold \
                 (4 x the advertised FastCDC average): it has no chunks; read it whole",
                blob.size()
            )));
        }
        // A remembered list answers without reading the blob, which may be in the bucket only.
        if let Some(chunks) = self.cache.get(&blob) {
            if self.store.is_present(&blob).await?
                && self.store.find_missing(&chunks).await.is_empty()
            {
                self.cas.pin([&blob]);
                return Ok(chunks);
            }
            // The blob or a chunk was evicted since: cut it again, which stores them anew.
            self.cache.forget(&blob);
        }
        if !self.store.ensure_local(&[blob]).await.is_empty() {
            return Err(Error::Absent(format!("blob {blob} is not in the CAS")));
        }
        let (cas, params) = (self.cas.clone(), self.options.fast_cdc);
        let (new, cut) = blocking(move || Ok(cut_and_store(&cas, &blob, params))).await?;
        // Chunks stored before a failure are valid blobs a client may already have been told
        // of: they reach the bucket like any others.
        let replicated = self.store.commit_upload(&new, &new).await;
        let chunks: Arc<[Digest]> = cut?.into();
        replicated?;
        self.cas.pin(chunks.iter());
        self.cache.insert(blob, chunks.clone());
        Ok(chunks)
    }
}

/// Cuts `blob` into chunks, storing those the CAS lacks. Returns the chunks it stored (even
/// when it then failed) and every chunk, in order.
fn cut_and_store(
    cas: &Cas,
    blob: &Digest,
    params: super::FastCdcParams,
) -> (Vec<Digest>, Result<Vec<Digest>, Error>) {
    let mut new = Vec::new();
    let cut = cut_into(cas, blob, params, &mut new);
    (new, cut)
}

fn cut_into(
    cas: &Cas,
    blob: &Digest,
    params: super::FastCdcParams,
    new: &mut Vec<Digest>,
) -> Result<Vec<Digest>, Error> {
    let _lease = cas.lease(vec![*blob]);
    let Some(file) = cas.open_blob(blob)? else {
        return Err(Error::Absent(format!("blob {blob} is not in the CAS")));
    };
    let function = blob.function();
    let mut whole = function.hasher(blob.size());
    let mut read = 0u64;
    let mut chunks = Vec::new();
    let mut group: Vec<(Digest, Bytes)> = Vec::new();
    let mut group_bytes = 0usize;
    for chunk in params.chunks(std::io::BufReader::with_capacity(1 << 20, file)) {
        let chunk = chunk.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => Error::io(format!("reading blob {blob}"), e),
            other => Error::Bug(format!("cutting blob {blob}: {other}")),
        })?;
        whole.update(&chunk.data);
        read += chunk.data.len() as u64;
        let digest = Digest::of(function, &chunk.data);
        chunks.push(digest);
        if cas.contains(&digest) || group.iter().any(|(d, _)| *d == digest) {
            continue;
        }
        group_bytes += chunk.data.len();
        group.push((digest, Bytes::from(chunk.data)));
        if group_bytes >= WRITE_GROUP_BYTES {
            store_group(cas, std::mem::take(&mut group), new)?;
            group_bytes = 0;
        }
    }
    let actual = whole.finish(read);
    if actual != *blob {
        // The copy on disk went bad after it was verified. The chunks stored are sound blobs
        // of their own names, but they do not make this blob.
        cas.report_corrupt(blob, &actual);
        return Err(Error::Absent(format!(
            "blob {blob} was damaged on disk and has been removed; upload it again"
        )));
    }
    store_group(cas, group, new)?;
    Ok(chunks)
}

/// Stores chunks with one filesystem sync for the group.
fn store_group(cas: &Cas, group: Vec<(Digest, Bytes)>, new: &mut Vec<Digest>) -> Result<(), Error> {
    let digests: Vec<Digest> = group.iter().map(|(d, _)| *d).collect();
    for (digest, result) in digests.into_iter().zip(cas.put_batch_hashed(group)) {
        result?;
        new.push(digest);
    }
    Ok(())
}
