//! ContentAddressableStorage: existence checks, small-blob batches, tree listing, and the
//! chunked transfers of large blobs (in `chunked.rs`).

use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::{Error, ok_status};
use crate::offload::blocking;
use crate::proto::remote_execution::{
    BatchReadBlobsRequest, BatchReadBlobsResponse, BatchUpdateBlobsRequest,
    BatchUpdateBlobsResponse, FindMissingBlobsRequest, FindMissingBlobsResponse, GetTreeRequest,
    GetTreeResponse, SpliceBlobRequest, SpliceBlobResponse, SplitBlobRequest, SplitBlobResponse,
    batch_read_blobs_response, batch_update_blobs_response, compressor,
    content_addressable_storage_server::ContentAddressableStorage,
};
use crate::state::Context;
use crate::storage::tree;

/// GetTree pages hold at most this many directories unless the client asks for fewer.
const MAX_TREE_PAGE: usize = 10_000;

pub struct CasService {
    ctx: Context,
}

impl CasService {
    pub fn new(ctx: Context) -> Self {
        CasService { ctx }
    }
}

type GetTreeStream = tonic::codegen::BoxStream<GetTreeResponse>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<FindMissingBlobsRequest>,
    ) -> Result<Response<FindMissingBlobsResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        self.ctx
            .authorize(&caller, &req.instance_name, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = Digest::all_from_proto(function, &req.blob_digests)?;
        let missing = self.ctx.store.find_missing(&digests).await;
        Ok(Response::new(FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(Digest::to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<BatchUpdateBlobsRequest>,
    ) -> Result<Response<BatchUpdateBlobsResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        self.ctx
            .authorize(&caller, &req.instance_name, Role::Write)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        let max = self.ctx.max_batch_bytes();
        if total > max {
            return Err(Error::BadInput(format!(
                "BatchUpdateBlobs carries {total} bytes, over max_batch_total_size_bytes ({max}); \
                 upload large blobs with ByteStream Write"
            ))
            .into());
        }
        // Decode and check every entry, then store the valid ones in parallel chunks, each
        // with a single filesystem sync.
        let mut responses: Vec<batch_update_blobs_response::Response> = Vec::new();
        let mut valid: Vec<(usize, Digest, bytes::Bytes)> = Vec::new();
        for r in req.requests {
            let checked =
                Digest::from_required(function, r.digest.as_ref(), "blob").and_then(|digest| {
                    self.ctx.check_blob_size(&digest)?;
                    Ok((digest, decompress(r.compressor, &digest, r.data, max)?))
                });
            responses.push(batch_update_blobs_response::Response {
                digest: r.digest,
                status: Some(ok_status()),
            });
            match checked {
                Ok((digest, data)) => valid.push((responses.len() - 1, digest, data)),
                Err(e) => {
                    responses.last_mut().expect("just pushed").status = Some(e.to_rpc_status())
                }
            }
        }
        // With an object-store tier, only blobs new to the local disk may be dropped again
        // if the bucket refuses them; the index answers without counting a use.
        let tiered = self.ctx.store.remote().is_some();
        let index = self.ctx.cas.index();
        let uploaded: Vec<(usize, Digest, bool)> = valid
            .iter()
            .filter(|_| tiered)
            .map(|(i, d, _)| (*i, *d, index.is_verified(d).is_none()))
            .collect();
        let chunks = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(valid.len().div_ceil(64))
            .max(1);
        let chunk_len = valid.len().div_ceil(chunks).max(1);
        let mut tasks = Vec::new();
        while !valid.is_empty() {
            let rest = valid.split_off(chunk_len.min(valid.len()));
            let chunk = std::mem::replace(&mut valid, rest);
            let cas = self.ctx.cas.clone();
            tasks.push(blocking(move || {
                let (positions, items): (Vec<usize>, Vec<(Digest, bytes::Bytes)>) =
                    chunk.into_iter().map(|(i, d, b)| (i, (d, b))).unzip();
                Ok(positions
                    .into_iter()
                    .zip(cas.put_batch(items))
                    .collect::<Vec<_>>())
            }));
        }
        for outcome in futures::future::try_join_all(tasks).await? {
            for (i, result) in outcome {
                if let Err(e) = result {
                    responses[i].status = Some(e.to_rpc_status());
                }
            }
        }
        // The object-store tier: acknowledged only once durable there, as the policy says.
        let stored: Vec<&(usize, Digest, bool)> = uploaded
            .iter()
            .filter(|(i, _, _)| responses[*i].status.as_ref().is_some_and(|s| s.code == 0))
            .collect();
        let digests: Vec<Digest> = stored.iter().map(|(_, d, _)| *d).collect();
        let fresh: Vec<Digest> = stored.iter().filter(|u| u.2).map(|(_, d, _)| *d).collect();
        if let Err(e) = self.ctx.store.commit_upload(&digests, &fresh).await {
            for (i, _, _) in stored {
                responses[*i].status = Some(e.to_rpc_status());
            }
        }
        Ok(Response::new(BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<BatchReadBlobsRequest>,
    ) -> Result<Response<BatchReadBlobsResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        self.ctx
            .authorize(&caller, &req.instance_name, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digests = Digest::all_from_proto(function, &req.digests)?;
        let total: u64 = digests.iter().map(Digest::size).sum();
        let max = self.ctx.max_batch_bytes();
        if total > max {
            return Err(Error::BadInput(format!(
                "BatchReadBlobs asks for {total} bytes, over max_batch_total_size_bytes ({max}); \
                 read large blobs with ByteStream Read"
            ))
            .into());
        }
        self.ctx.store.ensure_local(&digests).await;
        let cas = self.ctx.cas.clone();
        let zstd = compressor::Value::Zstd as i32;
        let zstd_accepted = req.acceptable_compressors.contains(&zstd);
        let responses = blocking(move || {
            Ok(digests
                .into_iter()
                .map(|digest| {
                    let (data, status) = match cas.read(&digest) {
                        Ok(Some(data)) => (data, ok_status()),
                        Ok(None) => (
                            Default::default(),
                            Error::Absent(format!("blob {digest} is not in the CAS"))
                                .to_rpc_status(),
                        ),
                        Err(e) => (Default::default(), e.to_rpc_status()),
                    };
                    let (data, compressor) = encode_for_read(data, zstd_accepted);
                    batch_read_blobs_response::Response {
                        digest: Some(digest.to_proto()),
                        data,
                        compressor: compressor as i32,
                        status: Some(status),
                    }
                })
                .collect())
        })
        .await?;
        Ok(Response::new(BatchReadBlobsResponse { responses }))
    }

    async fn get_tree(
        &self,
        request: Request<GetTreeRequest>,
    ) -> Result<Response<GetTreeStream>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        self.ctx
            .authorize(&caller, &req.instance_name, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let root = Digest::from_required(function, req.root_digest.as_ref(), "root")?;
        if req.page_size < 0 {
            return Err(Error::BadInput("page_size must not be negative".into()).into());
        }
        let page_size = match req.page_size as usize {
            0 => MAX_TREE_PAGE,
            n => n.min(MAX_TREE_PAGE),
        };
        // Leave headroom under the 4 MiB message size most clients accept.
        let max_bytes = 3 * 1024 * 1024;
        self.ctx.store.prefetch_tree(&root, false).await?;
        let cas = self.ctx.cas.clone();
        let pages =
            blocking(move || tree::tree_pages(&cas, &root, page_size, max_bytes, &req.page_token))
                .await?;
        let responses = pages.into_iter().map(|page| {
            Ok(GetTreeResponse {
                directories: page.directories,
                next_page_token: page.next_page_token,
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn split_blob(
        &self,
        request: Request<SplitBlobRequest>,
    ) -> Result<Response<SplitBlobResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let reply = super::chunked::split(&self.ctx, &caller, request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn splice_blob(
        &self,
        request: Request<SpliceBlobRequest>,
    ) -> Result<Response<SpliceBlobResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let reply = super::chunked::splice(&self.ctx, &caller, request.into_inner()).await?;
        Ok(Response::new(reply))
    }
}

/// Blobs under this size go back as they are: compressing them saves too little.
const MIN_COMPRESSED_READ: usize = 512;

/// A blob's bytes as a batch read returns them: zstd (at its fastest level) when the client
/// accepts it and it saves space, identity otherwise.
fn encode_for_read(data: bytes::Bytes, zstd_accepted: bool) -> (bytes::Bytes, compressor::Value) {
    if !zstd_accepted || data.len() < MIN_COMPRESSED_READ {
        return (data, compressor::Value::Identity);
    }
    match zstd::bulk::compress(&data, 1) {
        Ok(packed) if packed.len() < data.len() => (packed.into(), compressor::Value::Zstd),
        _ => (data, compressor::Value::Identity),
    }
}

/// Turns a batch entry's bytes into the blob's raw bytes. The decompression buffer is sized
/// from the digest, which the client wrote, so a size over the batch limit is refused before
/// anything is allocated (a claimed petabyte would otherwise abort the process).
fn decompress(
    compressor: i32,
    digest: &Digest,
    data: bytes::Bytes,
    max_size: u64,
) -> Result<bytes::Bytes, Error> {
    match compressor::Value::try_from(compressor) {
        Ok(compressor::Value::Identity) => Ok(data),
        Ok(compressor::Value::Zstd) if digest.size() > max_size => Err(Error::BadInput(format!(
            "blob {digest}: its uncompressed size is over max_batch_total_size_bytes \
                 ({max_size}); upload it with ByteStream Write"
        ))),
        Ok(compressor::Value::Zstd) => zstd::bulk::decompress(&data, digest.size() as usize)
            .map(bytes::Bytes::from)
            .map_err(|e| Error::BadInput(format!("blob {digest}: invalid zstd data: {e}"))),
        _ => Err(Error::BadInput(format!(
            "blob {digest}: compressor {compressor} is not supported; use IDENTITY or ZSTD"
        ))),
    }
}
