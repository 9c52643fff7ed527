//! SplitBlob and SpliceBlob requests: validated here, served by
//! [`crate::storage::chunking::Chunker`].

use crate::auth::{Caller, Role};
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::remote_execution::{
    SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse, chunking_function,
};
use crate::state::Context;

/// Every chunk list SplitBlob returns is FastCDC 2020, whatever the client preferred (the
/// spec lets the server choose; it advertises no other).
pub async fn split(
    ctx: &Context,
    caller: &Caller,
    req: SplitBlobRequest,
) -> Result<SplitBlobResponse, Error> {
    ctx.authorize(caller, &req.instance_name, Role::Read)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    check_chunking_function(req.chunking_function)?;
    let blob = Digest::from_required(function, req.blob_digest.as_ref(), "blob")?;
    let chunks = ctx.chunker.split(blob).await?;
    Ok(SplitBlobResponse {
        chunk_digests: chunks.iter().map(Digest::to_proto).collect(),
        chunking_function: chunking_function::Value::FastCdc2020 as i32,
    })
}

/// The client's chunking function only says how it cut; any list that concatenates to the
/// blob is accepted.
pub async fn splice(
    ctx: &Context,
    caller: &Caller,
    req: SpliceBlobRequest,
) -> Result<SpliceBlobResponse, Error> {
    ctx.authorize(caller, &req.instance_name, Role::Write)?;
    let function = DigestFunction::from_proto(req.digest_function)?;
    check_chunking_function(req.chunking_function)?;
    let blob = Digest::from_required(function, req.blob_digest.as_ref(), "blob")?;
    ctx.check_blob_size(&blob)?;
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

fn check_chunking_function(value: i32) -> Result<(), Error> {
    chunking_function::Value::try_from(value)
        .map(|_| ())
        .map_err(|_| {
            Error::BadInput(format!(
                "unknown chunking function value {value}; this server knows UNKNOWN (0), \
                 FAST_CDC_2020 (1) and REP_MAX_CDC (2)"
            ))
        })
}
