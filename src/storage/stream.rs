//! The streaming pipelines of ByteStream, on the storage side: a read pumps a blob (or a
//! range of it, compressed on the way if asked) from its file in chunks on a blocking task;
//! a write feeds chunks to a blocking task that writes and hashes them into a
//! [`BlobWriter`], decompressing on the way if needed. Bytes never sit whole in memory.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::digest::Digest;
use crate::error::Error;
use crate::resource::Compression;
use crate::storage::{BlobWriter, Cas};

/// Size of each chunk read; well under the 4 MiB most clients accept per message.
const READ_CHUNK: usize = 1024 * 1024;
/// zstd level for compressed reads: fast, as the point is saving wire bytes cheaply.
const ZSTD_LEVEL: i32 = 1;

/// Opens `limit` bytes of `digest` from `offset` (uncompressed offsets) and streams them in
/// chunks; NOT_FOUND if the blob is not stored. The blob is leased while it is read.
pub async fn read(
    cas: Cas,
    digest: Digest,
    offset: u64,
    limit: u64,
    compression: Compression,
) -> Result<ReceiverStream<Result<Bytes, Error>>, Error> {
    // One chunk queued while the next is read: enough to keep the pipeline full, and each
    // chunk queued per stream is a megabyte of server memory.
    let (tx, rx) = mpsc::channel(1);
    let (opened_tx, opened_rx) = oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _lease = cas.lease(vec![digest]);
        let file = match cas.open_blob(&digest) {
            Ok(Some(file)) => file,
            Ok(None) => {
                let _ = opened_tx.send(Err(Error::Absent(format!(
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
        if let Err(e) = send_file(file, offset, limit, compression, &tx) {
            let _ = tx.blocking_send(Err(Error::io(format!("reading blob {digest}"), e)));
        }
    });
    opened_rx
        .await
        .map_err(|_| Error::Bug("read task ended early".into()))??;
    Ok(ReceiverStream::new(rx))
}

/// Messages from the gRPC stream to the blocking writer.
pub enum Chunk {
    Data(Bytes),
    Finish,
    /// The client sent something invalid; throw the upload away.
    Abort,
}

pub enum WriteEnd {
    Committed,
    /// The stream ended early.
    Unfinished,
}

/// Feeds the stream's chunks to the writer, counting them in `committed` as they land.
/// Returns how the stream ended and, when it can be resumed, the writer to park.
pub fn write_chunks(
    writer: BlobWriter,
    digest: &Digest,
    compression: Compression,
    mut rx: mpsc::Receiver<Chunk>,
    committed: &AtomicU64,
) -> Result<(WriteEnd, Option<BlobWriter>), Error> {
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
                        return Ok((WriteEnd::Committed, None));
                    }
                    Chunk::Abort => return Ok((WriteEnd::Unfinished, None)),
                }
            }
            Ok((WriteEnd::Unfinished, Some(writer)))
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::write::Decoder::new(writer)
                .map_err(|e| Error::Bug(format!("starting a zstd decoder: {e}")))?;
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
                        return Ok((WriteEnd::Committed, None));
                    }
                    Chunk::Abort => break,
                }
            }
            // A zstd stream cannot be resumed mid-frame: the client starts over.
            Ok((WriteEnd::Unfinished, None))
        }
    }
}

fn write_error(digest: &Digest, err: io::Error) -> Error {
    // Errors without an OS code come from our own size check or from the zstd decoder:
    // both mean the client sent bad data.
    match err.raw_os_error() {
        None => Error::BadInput(format!("upload of {digest}: {err}")),
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
    tx: &mpsc::Sender<Result<Bytes, Error>>,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    let reader = file.take(limit);
    match compression {
        Compression::Identity => pump(reader, tx),
        Compression::Zstd => pump(zstd::stream::read::Encoder::new(reader, ZSTD_LEVEL)?, tx),
    }
}

fn pump(mut reader: impl Read, tx: &mpsc::Sender<Result<Bytes, Error>>) -> io::Result<()> {
    loop {
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let n = reader
            .by_ref()
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Ok(()); // The client went away.
        }
    }
}
