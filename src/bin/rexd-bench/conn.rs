//! The connection to the server under test: channels, generated clients, what Capabilities
//! says, and the blob uploads every workload needs for its setup. Plain REAPI only, so any
//! server can be measured.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::WriteRequest;
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use rexd::proto::remote_execution::execution_client::ExecutionClient;
use tonic::transport::{Channel, Endpoint};

use crate::Result;

/// Client-side message limit: generous, so the server's limits are what a run meets.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// ByteStream chunk size for writes (the spec leaves it to the client; 1 MiB is common).
pub const WRITE_CHUNK: usize = 1024 * 1024;
/// Batch size used when the server advertises no limit (0): the usual gRPC message limit.
const DEFAULT_BATCH_LIMIT: usize = 4 * 1024 * 1024;
/// Batch requests in flight while uploading a workload's setup blobs.
const SETUP_CONCURRENCY: usize = 4;

/// Where the server is and what it offers. Cheap to clone: the channel is a handle.
#[derive(Clone)]
pub struct Conn {
    endpoint: Endpoint,
    channel: Channel,
    pub instance: String,
    /// Largest encoded BatchUpdateBlobs request to send, from Capabilities.
    pub batch_limit: usize,
    /// Capabilities.execution_capabilities.exec_enabled.
    pub exec_enabled: bool,
    /// Capabilities.high_api_version as "major.minor".
    pub api_version: String,
}

impl Conn {
    /// Connects to `target` (`grpc://host:port`) and reads the capabilities of `instance`.
    pub async fn open(target: &str, instance: &str) -> Result<Self> {
        let endpoint = endpoint(target)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {target}: {e}"))?;
        let caps = CapabilitiesClient::new(channel.clone())
            .get_capabilities(re::GetCapabilitiesRequest {
                instance_name: instance.to_string(),
            })
            .await
            .map_err(|e| format!("GetCapabilities: {e}"))?
            .into_inner();
        let cache = caps.cache_capabilities.unwrap_or_default();
        let sha256 = re::digest_function::Value::Sha256 as i32;
        if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256) {
            return Err(
                "the server does not offer SHA-256, the only function rexd-bench uses".into(),
            );
        }
        let advertised = cache.max_batch_total_size_bytes.max(0) as usize;
        let version = caps.high_api_version.unwrap_or_default();
        Ok(Conn {
            endpoint,
            channel,
            instance: instance.to_string(),
            batch_limit: if advertised == 0 {
                DEFAULT_BATCH_LIMIT
            } else {
                advertised
            },
            exec_enabled: caps.execution_capabilities.is_some_and(|e| e.exec_enabled),
            api_version: format!("{}.{}", version.major, version.minor),
        })
    }

    /// A second, independent HTTP/2 connection (for parallel streams).
    pub async fn new_connection(&self) -> Result<Channel> {
        Ok(self
            .endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting: {e}"))?)
    }

    /// The shared channel, for clients this module does not build.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn bytestream_on(channel: Channel) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    pub fn execution(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// `{instance}/` or nothing, to start a ByteStream resource name.
    pub fn resource_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    /// Packs `blobs` into BatchUpdateBlobs requests no larger (encoded) than the server's
    /// limit. Blobs too big for any batch are returned apart, for ByteStream.
    pub fn pack(&self, blobs: &[Bytes]) -> (Vec<re::BatchUpdateBlobsRequest>, Vec<Bytes>) {
        let empty = re::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            ..Default::default()
        };
        let base = empty.encoded_len();
        let mut requests = Vec::new();
        let mut oversized = Vec::new();
        let mut current = empty.clone();
        let mut size = base;
        for blob in blobs {
            let item = re::batch_update_blobs_request::Request {
                digest: Some(digest(blob)),
                data: blob.clone(),
                compressor: 0,
            };
            let len = item.encoded_len();
            let framed = 1 + prost::length_delimiter_len(len) + len;
            if base + framed > self.batch_limit {
                oversized.push(blob.clone());
                continue;
            }
            if size + framed > self.batch_limit {
                requests.push(std::mem::replace(&mut current, empty.clone()));
                size = base;
            }
            current.requests.push(item);
            size += framed;
        }
        if !current.requests.is_empty() {
            requests.push(current);
        }
        (requests, oversized)
    }

    /// Sends packed requests, `concurrency` at a time, and checks every blob's status.
    pub async fn send_batches(
        &self,
        requests: Vec<re::BatchUpdateBlobsRequest>,
        concurrency: usize,
    ) -> Result<()> {
        futures::stream::iter(requests)
            .map(|request| {
                let mut cas = self.cas();
                async move {
                    let reply = cas
                        .batch_update_blobs(request)
                        .await
                        .map_err(|e| format!("BatchUpdateBlobs: {e}"))?
                        .into_inner();
                    for r in reply.responses {
                        let status = r.status.unwrap_or_default();
                        if status.code != 0 {
                            return Err(format!(
                                "BatchUpdateBlobs: blob {:?} failed with code {}: {}",
                                r.digest, status.code, status.message
                            )
                            .into());
                        }
                    }
                    Ok::<(), crate::Error>(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Uploads setup blobs (not timed): batches where they fit, ByteStream otherwise. Empty
    /// blobs are skipped, as every server must treat them as present.
    pub async fn upload(&self, blobs: &[Bytes]) -> Result<()> {
        let blobs: Vec<Bytes> = blobs.iter().filter(|b| !b.is_empty()).cloned().collect();
        let (requests, oversized) = self.pack(&blobs);
        self.send_batches(requests, SETUP_CONCURRENCY).await?;
        for blob in oversized {
            let d = digest(&blob);
            let body = blob.clone();
            write_blob(
                Self::bytestream_on(self.channel.clone()),
                &self.resource_prefix(),
                &[],
                body,
                &d,
            )
            .await?;
        }
        Ok(())
    }
}

/// The SHA-256 digest of `data` as a proto.
pub fn digest(data: &[u8]) -> re::Digest {
    Digest::of(DigestFunction::Sha256, data).to_proto()
}

/// ByteStream-writes the blob `head ‖ body` (whose digest is `d`) in [`WRITE_CHUNK`]
/// messages. `body` is sliced, never copied, except for the first message that carries
/// `head` (the salt).
pub async fn write_blob(
    mut client: ByteStreamClient<Channel>,
    prefix: &str,
    head: &[u8],
    body: Bytes,
    d: &re::Digest,
) -> Result<()> {
    let size = head.len() + body.len();
    let resource_name = format!(
        "{prefix}uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash,
        d.size_bytes
    );
    let head = Bytes::copy_from_slice(head);
    let messages = size.div_ceil(WRITE_CHUNK).max(1);
    let requests = (0..messages).map(move |i| {
        let start = i * WRITE_CHUNK;
        let end = (start + WRITE_CHUNK).min(size);
        let data = if i == 0 {
            let mut first = BytesMut::with_capacity(end);
            first.extend_from_slice(&head);
            first.extend_from_slice(&body[..end - head.len()]);
            first.freeze()
        } else {
            body.slice(start - head.len()..end - head.len())
        };
        WriteRequest {
            resource_name: if i == 0 {
                resource_name.clone()
            } else {
                String::new()
            },
            write_offset: start as i64,
            finish_write: end == size,
            data,
        }
    });
    let reply = client
        .write(futures::stream::iter(requests))
        .await
        .map_err(|e| format!("ByteStream.Write of {}/{}: {e}", d.hash, d.size_bytes))?
        .into_inner();
    if reply.committed_size != size as i64 {
        return Err(format!(
            "ByteStream.Write of {}/{}: committed_size {} instead of {size}",
            d.hash, d.size_bytes, reply.committed_size
        )
        .into());
    }
    Ok(())
}

/// Turns `grpc://host:port` (or `http://`) into a tuned plaintext HTTP/2 endpoint.
fn endpoint(target: &str) -> Result<Endpoint> {
    let rest = target
        .strip_prefix("grpc://")
        .or_else(|| target.strip_prefix("http://"))
        .ok_or_else(|| {
            if target.starts_with("grpcs://") || target.starts_with("https://") {
                format!("{target}: TLS is not supported; measure a plaintext port")
            } else {
                format!("{target}: expected grpc://HOST:PORT")
            }
        })?;
    let endpoint = Endpoint::from_shared(format!("http://{rest}"))
        .map_err(|e| format!("{target}: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // Large windows, so one stream can fill a fast link (as Bazel and the server do).
        .initial_stream_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024);
    Ok(endpoint)
}
