//! SplitBlob and SpliceBlob requests: validated here, served by
//! [`crate::storage::chunking::Chunker`].

use crate::auth::{Caller, Role};
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::remote_execution::{
    SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse, chunking_function,
};
use crate::state::Context;

/// A SHA-256 chunk digest's size in a reply, field tags and size included, rounded up.
const DIGEST_WIRE_BYTES: u64 = 80;

fn too_many_chunks(blob: &Digest) -> Error {
    Error::OverLimit(format!(
        "blob {blob} has too many chunks at this chunk_average_size for one SplitBlob reply \
         (max_batch_total_size); read it whole with ByteStream"
    ))
}

/// Every chunk list SplitBlob returns is FastCDC 2020, whatever the client preferred (the
/// spec lets the server choose; it advertises no other), so the preference, even a value
/// newer than this server, is not checked.
pub async fn split(
    ctx: &Context,
    caller: &Caller,
    req: SplitBlobRequest,
) -> Result<SplitBlobResponse, Error> {
    ctx.authorize(caller, &req.instance_name, Role::Read)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    let blob = Digest::from_required(function, req.blob_digest.as_ref(), "blob")?;
    // The list must fit in one reply; refused before the blob is read if it cannot.
    let reply_limit = ctx.max_batch_bytes() as usize;
    let avg = u64::from(ctx.chunker.options().fast_cdc.avg);
    let fits = |chunks: u64| chunks.saturating_mul(DIGEST_WIRE_BYTES) <= reply_limit as u64;
    if !fits(blob.size() / avg) {
        return Err(too_many_chunks(&blob));
    }
    let chunks = ctx.chunker.split(blob).await?;
    if !fits(chunks.len() as u64) {
        return Err(too_many_chunks(&blob));
    }
    Ok(SplitBlobResponse {
        chunk_digests: chunks.iter().map(Digest::to_proto).collect(),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
    })
}

/// The client's chunking function only says how it cut; any list that concatenates to the
/// blob is accepted, whatever the value.
pub async fn splice(
    ctx: &Context,
    caller: &Caller,
    req: SpliceBlobRequest,
) -> Result<SpliceBlobResponse, Error> {
    ctx.authorize(caller, &req.instance_name, Role::Write)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    let blob = Digest::from_required(function, req.blob_digest.as_ref(), "blob")?;
    ctx.check_blob_size(&blob)?;
    // A short list can name one chunk many times: the blob it makes is bounded by the disk
    // budget, not by the request's size.
    let budget = ctx.settings.written.storage.max_size.as_u64();
    if budget > 0 && blob.size() > budget {
        return Err(Error::OverLimit(format!(
            "blob {blob} is larger than the CAS's whole storage.max_size of {budget} bytes"
        )));
    }
    let chunks = Digest::all_from_proto(function, &req.chunk_digests)?;
    if chunks.is_empty() && !blob.is_empty_blob() {
        return Err(Error::BadInput(format!(
            "SpliceBlob of {blob} names no chunks"
        )));
    }
    let blob = ctx.chunker.splice(blob, chunks).await?;
    Ok(SpliceBlobResponse {
        blob_digest: Some(blob.to_proto()),
    })
}
