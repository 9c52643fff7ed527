//! ByteStream: streamed blob reads and writes, resumable uploads, and zstd on the wire. The
//! adapter checks resource names, offsets and the upload's continuity; the pipelines that
//! move the bytes are [`crate::storage::stream`], and the upload registry that makes writes
//! resumable is [`crate::storage::uploads`].

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Role;
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server::ByteStream,
};
use crate::resource::{Compression, ResourceName};
use crate::state::Context;
use crate::storage::BlobWriter;
use crate::storage::stream::{Chunk, WriteEnd, write_chunks};
use crate::storage::uploads::{Begun, Uploads};

pub struct ByteStreamService {
    ctx: Context,
    uploads: Arc<Uploads>,
}

impl ByteStreamService {
    pub fn new(ctx: Context) -> Self {
        let uploads = ctx.uploads.clone();
        ByteStreamService { ctx, uploads }
    }
}

fn upload_key(name: &ResourceName) -> String {
    format!(
        "{}/{}/{:?}",
        name.instance,
        name.upload_id.as_deref().unwrap_or_default(),
        name.digest
    )
}

type ReadStream = tonic::codegen::BoxStream<ReadResponse>;

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let name = ResourceName::parse_read(&req.resource_name)?;
        self.ctx.authorize(&caller, &name.instance, Role::Read)?;
        let digest = name.digest;
        let size = digest.size();
        if req.read_offset < 0 || req.read_offset as u64 > size {
            return Err(Error::BeyondEnd(format!(
                "read_offset {} is outside blob {digest} of {size} bytes",
                req.read_offset
            ))
            .into());
        }
        if req.read_limit < 0 {
            return Err(Error::BadInput("read_limit must not be negative".into()).into());
        }
        if req.read_limit != 0 && name.compression != Compression::Identity {
            return Err(Error::BadInput(
                "read_limit must be 0 when reading compressed-blobs".into(),
            )
            .into());
        }
        let offset = req.read_offset as u64;
        let remaining = size - offset;
        let limit = match req.read_limit as u64 {
            0 => remaining,
            n => n.min(remaining),
        };
        let chunks = self
            .ctx
            .store
            .read(digest, offset, limit, name.compression)
            .await?;
        Ok(Response::new(Box::pin(chunks.map(|chunk| {
            chunk
                .map(|data| ReadResponse { data })
                .map_err(Status::from)
        }))))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Error::BadInput("Write stream carried no request".into()))?;
        let name = ResourceName::parse_write(&first.resource_name)?;
        self.ctx.authorize(&caller, &name.instance, Role::Write)?;
        let digest = name.digest;
        self.ctx.check_blob_size(&digest)?;
        let compressed = name.compression != Compression::Identity;
        if self.ctx.store.is_present(&digest).await? {
            // Already stored: the spec lets the server end the upload at once.
            let committed = if compressed { -1 } else { digest.size() as i64 };
            return Ok(Response::new(WriteResponse {
                committed_size: committed,
            }));
        }
        if first.write_offset == 0
            && !compressed
            && first.finish_write
            && first.data.len() as u64 == digest.size()
        {
            // A whole blob in one message, as Bazel sends its Action, Command and Directory
            // messages (six uploads per action): one blocking call stores it, without the
            // streaming path's task, channel and resumable-upload record.
            let (cas, sync) = (
                self.ctx.cas.clone(),
                self.ctx.store.uploads_need_local_sync(),
            );
            let data = first.data;
            blocking(move || cas.put_synced(&digest, &data, sync)).await?;
            self.ctx.store.finish_upload(&digest, None).await?;
            return Ok(Response::new(WriteResponse {
                committed_size: digest.size() as i64,
            }));
        }
        // A fresh upload in write-through mode goes to the bucket as it arrives.
        let mut streamed = match (first.write_offset, compressed) {
            (0, false) => self.ctx.store.begin_streamed_upload(&digest).await?,
            _ => None,
        };
        let Begun { upload, resumed } = self.uploads.begin(&upload_key(&name)).await;
        let start = match (first.write_offset, resumed) {
            (0, _) => None,
            (offset, Some(writer)) if !compressed && writer.written() == offset as u64 => {
                Some(writer)
            }
            (offset, other) => {
                let committed = other.as_ref().map_or(0, BlobWriter::written);
                self.uploads.end(&upload, other);
                return Err(Error::BadInput(format!(
                    "write_offset {offset} does not continue upload {:?}; committed_size is \
                     {committed}, ask QueryWriteStatus and resume from there",
                    first.resource_name
                ))
                .into());
            }
        };

        // As for reads: one chunk queued while the writer writes the previous one.
        let (tx, rx) = mpsc::channel::<Chunk>(1);
        let cas = self.ctx.cas.clone();
        let sync = self.ctx.store.uploads_need_local_sync();
        let compression = name.compression;
        let superseded = upload.superseded.clone();
        let uploads = self.uploads.clone();
        // The writer's task, not this handler, ends the upload in the registry: it owns the
        // writer, and it runs to the end even if this handler is dropped.
        let task = tokio::task::spawn_blocking(move || {
            let written = match start {
                Some(writer) => Ok(writer),
                None => cas
                    .writer(&digest)
                    .map(|w| if sync { w } else { w.without_sync() }),
            }
            .and_then(|writer| write_chunks(writer, &digest, compression, rx, &upload.committed));
            let (outcome, parked) = match written {
                Ok((outcome, parked)) => (Ok(outcome), parked),
                Err(e) => (Err(e), None),
            };
            uploads.end(&upload, parked);
            outcome
        });

        let resource_name = first.resource_name.clone();
        let mut offset = first.write_offset;
        let mut next = Some(first);
        let mut stream_error: Option<Status> = None;
        let mut input_error: Option<Error> = None;
        while let Some(msg) = next.take() {
            if msg.write_offset != offset {
                input_error = Some(Error::BadInput(format!(
                    "write_offset {} does not follow the {offset} bytes sent so far",
                    msg.write_offset
                )));
                break;
            }
            if !msg.resource_name.is_empty() && msg.resource_name != resource_name {
                input_error = Some(Error::BadInput(format!(
                    "resource_name changed within one Write stream, from {resource_name:?} to {:?}",
                    msg.resource_name
                )));
                break;
            }
            offset += msg.data.len() as i64;
            if let Some(put) = streamed.as_mut() {
                if let Err(e) = put.write(&msg.data).await {
                    input_error = Some(e);
                    break;
                }
            }
            if !msg.data.is_empty() && tx.send(Chunk::Data(msg.data)).await.is_err() {
                break; // The writer failed; its error comes from the task below.
            }
            if msg.finish_write {
                let _ = tx.send(Chunk::Finish).await;
                break;
            }
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(msg)) => next = Some(msg),
                    Ok(None) => break,
                    Err(status) => stream_error = Some(status),
                },
                _ = superseded.cancelled() => {
                    stream_error = Some(Error::Conflict(format!(
                        "a newer Write of {resource_name:?} took over this upload"
                    )).into());
                }
            }
        }
        if input_error.is_some() {
            let _ = tx.send(Chunk::Abort).await;
        }
        drop(tx);
        let outcome = task
            .await
            .map_err(|e| Error::Bug(format!("upload task failed: {e}")))
            .and_then(|stored| stored);
        let outcome = match outcome {
            Ok(WriteEnd::Committed) => WriteEnd::Committed,
            other => {
                if let Some(put) = streamed.take() {
                    tokio::spawn(put.abort());
                }
                other?
            }
        };
        match outcome {
            WriteEnd::Committed => {
                self.ctx.store.finish_upload(&digest, streamed).await?;
                Ok(Response::new(WriteResponse {
                    committed_size: offset,
                }))
            }
            WriteEnd::Unfinished => Err(input_error
                .map(Status::from)
                .or(stream_error)
                .unwrap_or_else(|| {
                    Error::BadInput(format!(
                        "Write stream for {resource_name:?} ended after {offset} bytes \
                         without finish_write"
                    ))
                    .into()
                })),
        }
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let name = ResourceName::parse_write(&request.get_ref().resource_name)?;
        self.ctx.authorize(&caller, &name.instance, Role::Write)?;
        if self.ctx.store.is_present(&name.digest).await? {
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: name.digest.size() as i64,
                complete: true,
            }));
        }
        match self.uploads.committed(&upload_key(&name)) {
            Some(committed) => Ok(Response::new(QueryWriteStatusResponse {
                committed_size: committed as i64,
                complete: false,
            })),
            None => Err(Error::Absent(format!(
                "no upload of {} is in progress or resumable",
                request.get_ref().resource_name
            ))
            .into()),
        }
    }
}
