//! ByteStream: streamed blob reads and writes, resumable uploads, and zstd on the wire.
//!
//! Bytes never sit whole in memory: a read is pumped from the file in chunks by a blocking
//! task; a write is fed chunk by chunk to a blocking task that hashes and writes it to a temp
//! file, which is renamed into the CAS only once verified.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Role;
use crate::digest::Digest;
use crate::error::Error;
use crate::proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server::ByteStream,
};
use crate::resource::{Compression, ResourceName};
use crate::state::Context;
use crate::storage::BlobWriter;
use crate::storage::uploads::{Begun, Uploads};

/// Size of each ReadResponse chunk; well under the 4 MiB most clients accept per message.
const READ_CHUNK: usize = 1024 * 1024;
/// zstd level for compressed reads: fast, as the point is saving wire bytes cheaply.
const ZSTD_LEVEL: i32 = 1;
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
            return Err(Error::OutOfRange(format!(
                "read_offset {} is outside blob {digest} of {size} bytes",
                req.read_offset
            ))
            .into());
        }
        if req.read_limit < 0 {
            return Err(Error::InvalidArgument("read_limit must not be negative".into()).into());
        }
        if req.read_limit != 0 && name.compression != Compression::Identity {
            return Err(Error::InvalidArgument(
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
        // One chunk queued while the next is read: enough to keep the pipeline full, and
        // each chunk queued per stream is a megabyte of server memory.
        let (tx, rx) = mpsc::channel(1);
        let (opened_tx, opened_rx) = oneshot::channel();
        let cas = self.ctx.cas.clone();
        tokio::task::spawn_blocking(move || {
            let _lease = cas.lease(vec![digest]);
            let file = match cas.open_blob(&digest) {
                Ok(Some(file)) => file,
                Ok(None) => {
                    let _ = opened_tx.send(Err(Error::NotFound(format!(
                        "blob {digest} is not in the CAS"
                    ))));
                    return;
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            if opened_tx.send(Ok(())).is_err() {
                return;
            }
            if let Err(e) = send_file(file, offset, limit, name.compression, &tx) {
                let status = Error::io(format!("reading blob {digest}"), e).into();
                let _ = tx.blocking_send(Err(status));
            }
        });
        opened_rx
            .await
            .map_err(|_| Error::Internal("read task ended early".into()))??;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
            .ok_or_else(|| Error::InvalidArgument("Write stream carried no request".into()))?;
        let name = ResourceName::parse_write(&first.resource_name)?;
        self.ctx.authorize(&caller, &name.instance, Role::Write)?;
        let digest = name.digest;
        self.ctx.check_blob_size(&digest)?;
        let compressed = name.compression != Compression::Identity;
        if self.ctx.blob_present(&digest).await? {
            // Already stored: the spec lets the server end the upload at once.
            let committed = if compressed { -1 } else { digest.size() as i64 };
            return Ok(Response::new(WriteResponse {
                committed_size: committed,
            }));
        }
        let Begun { upload, resumed } = self.uploads.begin(&upload_key(&name)).await;
        let start = match (first.write_offset, resumed) {
            (0, _) => None,
            (offset, Some(writer)) if !compressed && writer.written() == offset as u64 => {
                Some(writer)
            }
            (offset, other) => {
                let committed = other.as_ref().map_or(0, BlobWriter::written);
                self.uploads.end(&upload, other);
                return Err(Error::InvalidArgument(format!(
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
        let compression = name.compression;
        let superseded = upload.superseded.clone();
        let uploads = self.uploads.clone();
        // The writer's task, not this handler, ends the upload in the registry: it owns the
        // writer, and it runs to the end even if this handler is dropped.
        let task = tokio::task::spawn_blocking(move || {
            let written = match start {
                Some(writer) => Ok(writer),
                None => cas.writer(&digest),
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
                input_error = Some(Error::InvalidArgument(format!(
                    "write_offset {} does not follow the {offset} bytes sent so far",
                    msg.write_offset
                )));
                break;
            }
            if !msg.resource_name.is_empty() && msg.resource_name != resource_name {
                input_error = Some(Error::InvalidArgument(format!(
                    "resource_name changed within one Write stream, from {resource_name:?} to {:?}",
                    msg.resource_name
                )));
                break;
            }
            offset += msg.data.len() as i64;
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
                    stream_error = Some(Error::Aborted(format!(
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
            .map_err(|e| Error::Internal(format!("upload task failed: {e}")))??;
        match outcome {
            Outcome::Committed => Ok(Response::new(WriteResponse {
                committed_size: offset,
            })),
            Outcome::Unfinished => Err(input_error
                .map(Status::from)
                .or(stream_error)
                .unwrap_or_else(|| {
                    Error::InvalidArgument(format!(
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
        if self.ctx.blob_present(&name.digest).await? {
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
            None => Err(Error::NotFound(format!(
                "no upload of {} is in progress or resumable",
                request.get_ref().resource_name
            ))
            .into()),
        }
    }
}

/// Messages from the gRPC stream to the blocking writer.
enum Chunk {
    Data(Bytes),
    Finish,
    /// The client sent something invalid; throw the upload away.
    Abort,
}

enum Outcome {
    Committed,
    /// The stream ended early.
    Unfinished,
}

/// Feeds the stream's chunks to the writer, counting them in `committed` as they land.
/// Returns how the stream ended and, when it can be resumed, the writer to park.
fn write_chunks(
    writer: BlobWriter,
    digest: &Digest,
    compression: Compression,
    mut rx: mpsc::Receiver<Chunk>,
    committed: &AtomicU64,
) -> Result<(Outcome, Option<BlobWriter>), Error> {
    match compression {
        Compression::Identity => {
            let mut writer = writer;
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Chunk::Data(data) => {
                        writer
                            .write_all(&data)
                            .map_err(|e| write_error(digest, e))?;
                        committed.store(writer.written(), Ordering::Release);
                    }
                    Chunk::Finish => {
                        writer.commit()?;
                        return Ok((Outcome::Committed, None));
                    }
                    Chunk::Abort => return Ok((Outcome::Unfinished, None)),
                }
            }
            Ok((Outcome::Unfinished, Some(writer)))
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::write::Decoder::new(writer)
                .map_err(|e| Error::Internal(format!("starting a zstd decoder: {e}")))?;
            while let Some(chunk) = rx.blocking_recv() {
                match chunk {
                    Chunk::Data(data) => {
                        decoder
                            .write_all(&data)
                            .map_err(|e| write_error(digest, e))?;
                        // Compressed uploads count the compressed bytes received.
                        committed.fetch_add(data.len() as u64, Ordering::Release);
                    }
                    Chunk::Finish => {
                        decoder.flush().map_err(|e| write_error(digest, e))?;
                        decoder.into_inner().commit()?;
                        return Ok((Outcome::Committed, None));
                    }
                    Chunk::Abort => break,
                }
            }
            // A zstd stream cannot be resumed mid-frame: the client starts over.
            Ok((Outcome::Unfinished, None))
        }
    }
}

fn write_error(digest: &Digest, err: io::Error) -> Error {
    // Errors without an OS code come from our own size check or from the zstd decoder:
    // both mean the client sent bad data.
    match err.raw_os_error() {
        None => Error::InvalidArgument(format!("upload of {digest}: {err}")),
        Some(_) => Error::io(format!("writing blob {digest}"), err),
    }
}

/// Streams `limit` bytes from `offset` of an open blob into the response channel, compressing
/// on the way if asked. Offsets and limits count uncompressed bytes.
fn send_file(
    mut file: std::fs::File,
    offset: u64,
    limit: u64,
    compression: Compression,
    tx: &mpsc::Sender<Result<ReadResponse, Status>>,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let reader = file.take(limit);
    match compression {
        Compression::Identity => pump(reader, tx),
        Compression::Zstd => pump(zstd::stream::read::Encoder::new(reader, ZSTD_LEVEL)?, tx),
    }
}

fn pump(mut reader: impl Read, tx: &mpsc::Sender<Result<ReadResponse, Status>>) -> io::Result<()> {
    loop {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let n = reader
            .by_ref()
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if tx
            .blocking_send(Ok(ReadResponse {
                data: Bytes::from(buf),
            }))
            .is_err()
        {
            return Ok(()); // The client went away.
        }
    }
}
