//! The worker's side of the server's CAS: fetching what a lease needs into the local CAS
//! cache, and uploading what it produced. Blobs up to a batch's size travel in
//! BatchReadBlobs and BatchUpdateBlobs; larger ones stream through ByteStream, hashed as
//! they land, never whole in memory.

use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::digest::Digest;
use crate::error::Error;
use crate::proto::bytestream::{ReadRequest, WriteRequest, byte_stream_client::ByteStreamClient};
use crate::proto::remote_execution::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest, GetTreeRequest,
    batch_update_blobs_request,
    content_addressable_storage_client::ContentAddressableStorageClient,
};
use crate::resource::Compression;
use crate::storage::Cas;
use crate::storage::stream::{Chunk, WriteEnd};

/// A channel to the server that adds the worker's token to every call.
pub type Authed = InterceptedService<Channel, super::connect::Token>;

/// Total bytes of one batch call; under the server's usual 4 MiB message limit.
const BATCH_BYTES: u64 = 3 * 1024 * 1024;
/// Digests per FindMissingBlobs call.
const FIND_MISSING_CHUNK: usize = 4096;

/// The server's CAS, for one instance.
#[derive(Clone)]
pub struct RemoteCas {
    pub channel: Authed,
    pub instance: String,
}

/// Counts of one lease's transfers, for the worker's log line.
#[derive(Default, Debug, Clone, Copy)]
pub struct Transferred {
    pub blobs: u64,
    pub bytes: u64,
}

impl RemoteCas {
    fn cas(&self) -> ContentAddressableStorageClient<Authed> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Copies every Directory under `root` into the local CAS with one GetTree stream.
    pub async fn fetch_tree(&self, local: &Cas, root: &Digest) -> Result<(), Error> {
        let mut stream = self
            .cas()
            .get_tree(GetTreeRequest {
                instance_name: self.instance.clone(),
                root_digest: Some(root.to_proto()),
                digest_function: root.function().to_proto() as i32,
                ..Default::default()
            })
            .await
            .map_err(upstream)?
            .into_inner();
        let mut items = Vec::new();
        while let Some(page) = stream.next().await {
            for dir in page.map_err(upstream)?.directories {
                let bytes = Bytes::from(prost::Message::encode_to_vec(&dir));
                items.push((Digest::of(root.function(), &bytes), bytes));
            }
        }
        let local = local.clone();
        crate::offload::blocking(move || {
            local
                .put_batch(items)
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            Ok(())
        })
        .await
    }

    /// Fetches the blobs of `digests` that the local CAS lacks.
    pub async fn fetch_missing(
        &self,
        local: &Cas,
        digests: &[Digest],
    ) -> Result<Transferred, Error> {
        let (batches, large) = by_size(local.find_missing(digests));
        let mut done = Transferred::default();
        for batch in batches {
            let data = self.batch_read(&batch).await?;
            done.bytes += data.iter().map(|d| d.len() as u64).sum::<u64>();
            done.blobs += data.len() as u64;
            let items: Vec<_> = batch.into_iter().zip(data).collect();
            let local = local.clone();
            crate::offload::blocking(move || {
                local
                    .put_batch(items)
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(())
            })
            .await?;
        }
        for digest in large {
            self.read_stream(local, &digest).await?;
            done.blobs += 1;
            done.bytes += digest.size();
        }
        Ok(done)
    }

    /// One small blob read into memory and checked against its digest, not stored: for the
    /// Command, which the lease's run needs only decoded.
    pub async fn read_small(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        let data = self.batch_read(std::slice::from_ref(digest)).await?;
        let data = data.into_iter().next().unwrap_or_default();
        let actual = Digest::of(digest.function(), &data);
        if actual != *digest {
            return Err(Error::Upstream(format!(
                "the server sent {actual} for {digest}"
            )));
        }
        Ok(data.to_vec())
    }

    /// One BatchReadBlobs: the blobs' bytes in the order asked (unchecked), or MissingBlobs
    /// for the first the server could not give.
    async fn batch_read(&self, batch: &[Digest]) -> Result<Vec<bytes::Bytes>, Error> {
        let reply = self
            .cas()
            .batch_read_blobs(BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: batch.iter().map(Digest::to_proto).collect(),
                digest_function: batch[0].function().to_proto() as i32,
                ..Default::default()
            })
            .await
            .map_err(upstream)?
            .into_inner();
        if reply.responses.len() != batch.len() {
            return Err(Error::Upstream(format!(
                "BatchReadBlobs answered {} of {} blobs",
                reply.responses.len(),
                batch.len()
            )));
        }
        batch
            .iter()
            .zip(reply.responses)
            .map(
                |(want, got)| match got.status.as_ref().map_or(0, |s| s.code) {
                    0 => Ok(got.data),
                    _ => Err(Error::MissingBlobs(vec![*want])),
                },
            )
            .collect()
    }

    async fn read_stream(&self, local: &Cas, digest: &Digest) -> Result<(), Error> {
        let mut stream = ByteStreamClient::new(self.channel.clone())
            .read(ReadRequest {
                resource_name: format!("{}{}", prefix(&self.instance), digest.blob_path()),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .map_err(|s| missing_or_upstream(s, digest))?
            .into_inner();
        let writer = local.writer(digest)?;
        let (tx, rx) = mpsc::channel(2);
        let target = *digest;
        let sink = tokio::task::spawn_blocking(move || {
            crate::storage::stream::write_chunks(
                writer,
                &target,
                Compression::Identity,
                rx,
                &AtomicU64::new(0),
            )
        });
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| missing_or_upstream(s, digest))?;
            if tx.send(Chunk::Data(chunk.data)).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Chunk::Finish).await;
        drop(tx);
        match sink
            .await
            .map_err(|e| Error::Bug(format!("blob writer: {e}")))??
        {
            (WriteEnd::Committed, _) => Ok(()),
            (WriteEnd::Unfinished, _) => Err(Error::Upstream(format!(
                "the server's stream of {digest} ended early"
            ))),
        }
    }

    /// Uploads the blobs of `digests` (all in the local CAS) that the server lacks.
    pub async fn upload_missing(
        &self,
        local: &Cas,
        digests: &[Digest],
    ) -> Result<Transferred, Error> {
        let mut missing = Vec::new();
        for chunk in digests.chunks(FIND_MISSING_CHUNK) {
            let reply = self
                .cas()
                .find_missing_blobs(FindMissingBlobsRequest {
                    instance_name: self.instance.clone(),
                    blob_digests: chunk.iter().map(Digest::to_proto).collect(),
                    digest_function: chunk[0].function().to_proto() as i32,
                })
                .await
                .map_err(upstream)?
                .into_inner();
            let function = chunk[0].function();
            for d in reply.missing_blob_digests {
                missing.push(Digest::from_proto(function, &d)?);
            }
        }
        let (batches, large) = by_size(missing);
        let mut done = Transferred::default();
        for batch in batches {
            let local_cas = local.clone();
            let wanted = batch.clone();
            let requests = crate::offload::blocking(move || {
                wanted
                    .iter()
                    .map(|d| {
                        let data = local_cas.read(d)?.ok_or_else(|| {
                            Error::Bug(format!("output {d} left the worker's CAS before upload"))
                        })?;
                        Ok(batch_update_blobs_request::Request {
                            digest: Some(d.to_proto()),
                            data,
                            ..Default::default()
                        })
                    })
                    .collect::<Result<Vec<_>, Error>>()
            })
            .await?;
            done.bytes += requests.iter().map(|r| r.data.len() as u64).sum::<u64>();
            done.blobs += requests.len() as u64;
            let reply = self
                .cas()
                .batch_update_blobs(BatchUpdateBlobsRequest {
                    instance_name: self.instance.clone(),
                    requests,
                    digest_function: batch[0].function().to_proto() as i32,
                })
                .await
                .map_err(upstream)?
                .into_inner();
            if let Some(bad) = reply
                .responses
                .iter()
                .find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
            {
                let status = bad.status.clone().unwrap_or_default();
                return Err(Error::Upstream(format!(
                    "the server refused an output: {}",
                    status.message
                )));
            }
        }
        for digest in large {
            self.write_stream(local, &digest).await?;
            done.blobs += 1;
            done.bytes += digest.size();
        }
        Ok(done)
    }

    async fn write_stream(&self, local: &Cas, digest: &Digest) -> Result<(), Error> {
        let chunks =
            crate::storage::stream::read(local.clone(), *digest, 0, 0, Compression::Identity)
                .await?;
        let resource = format!(
            "{}uploads/{}/{}",
            prefix(&self.instance),
            uuid::Uuid::new_v4(),
            digest.blob_path()
        );
        let size = digest.size() as i64;
        let mut offset = 0i64;
        let requests = chunks.map(move |chunk| {
            let data = chunk.unwrap_or_default();
            let request = WriteRequest {
                resource_name: if offset == 0 {
                    resource.clone()
                } else {
                    String::new()
                },
                write_offset: offset,
                finish_write: offset + data.len() as i64 == size,
                data,
            };
            offset += request.data.len() as i64;
            request
        });
        ByteStreamClient::new(self.channel.clone())
            .write(requests)
            .await
            .map_err(upstream)?;
        Ok(())
    }
}

/// `INSTANCE/` or nothing, as resource names begin.
fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    }
}

/// The distinct digests of `digests`: those small enough for batch calls in runs whose sizes
/// add up to at most [`BATCH_BYTES`], and the rest, which stream one by one.
fn by_size(mut digests: Vec<Digest>) -> (Vec<Vec<Digest>>, Vec<Digest>) {
    digests.sort_unstable();
    digests.dedup();
    let (small, large): (Vec<_>, Vec<_>) =
        digests.into_iter().partition(|d| d.size() <= BATCH_BYTES);
    let mut out: Vec<Vec<Digest>> = Vec::new();
    let mut bytes = 0;
    for d in small {
        if out.is_empty() || bytes + d.size() > BATCH_BYTES {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += d.size();
        out.last_mut().expect("pushed").push(d);
    }
    (out, large)
}

fn upstream(status: tonic::Status) -> Error {
    Error::Upstream(format!(
        "the server answered {:?}: {}",
        status.code(),
        status.message()
    ))
}

fn missing_or_upstream(status: tonic::Status, digest: &Digest) -> Error {
    if status.code() == tonic::Code::NotFound {
        Error::MissingBlobs(vec![*digest])
    } else {
        upstream(status)
    }
}
