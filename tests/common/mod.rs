//! Shared harness for integration tests: a real rexd started in-process on 127.0.0.1:0 with
//! its own temp data directory, and generated clients that talk to it.
#![allow(dead_code)]

pub mod bazel;
pub mod bots;
pub mod browser;
pub mod bst;
/// rexd as a child process, to kill.
pub mod child;
pub mod exec;
/// Fixture copying shared by the end-to-end workspaces.
pub mod fs;
/// A real S3 server (Garage) for the object-store tier tests.
pub mod garage;
/// The upload load the kill tests put on a child server.
pub mod kill_load;
pub mod netns;
pub mod sandboxed;
/// Helpers of the storage tests.
pub mod storage;
pub mod web;

use std::net::SocketAddr;

use rexd::config::Config;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Generous client-side message limit, so tests see the server's limits, not the client's.
pub const CLIENT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The network namespace it serves in, when not the test's own.
    pub netns: Option<String>,
    pub data_dir: TempDir,
    pub ctx: rexd::state::Context,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), rexd::Error>>>,
}

impl TestServer {
    /// rexd with the default configuration and a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// rexd with the default configuration as changed by `edit`.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), edit).await
    }

    /// rexd on an existing data directory (for restart tests).
    pub async fn start_in(data_dir: TempDir, edit: impl FnOnce(&mut Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(data_dir, listener, None, edit).await
    }

    /// rexd on the server host of `hosts` (a namespace of its own), port
    /// [`netns::SERVER_PORT`] on every address there.
    pub async fn start_on_host(
        hosts: &netns::Hosts,
        data_dir: TempDir,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let listener = tokio::net::TcpListener::from_std(hosts.server_listener()).unwrap();
        Self::start_on(data_dir, listener, Some(hosts.server.clone()), edit).await
    }

    async fn start_on(
        data_dir: TempDir,
        listener: tokio::net::TcpListener,
        netns: Option<String>,
        edit: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config {
            data_dir: Some(data_dir.path().to_path_buf()),
            ..Config::default()
        };
        config.storage.fsync = false;
        config.sandbox.run_as_uid_base = private_uid_base();
        // This test binary is not rexd: the long-lived sandboxes' pid 1 is the real one.
        config.sandbox.init_program = Some(env!("CARGO_BIN_EXE_rexd").into());
        edit(&mut config);
        // Tests run servers side by side; one that wants the HTTP listener names a port.
        if config.metrics.listen.is_none() {
            config.metrics.enabled = false;
        }
        let ctx = tokio::task::spawn_blocking(move || {
            rexd::server::open_context(rexd::config::Settings::new(config).expect("valid settings"))
        })
        .await
        .unwrap()
        .expect("opening the stores");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(rexd::server::run(ctx.clone(), listener, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            netns,
            data_dir,
            ctx,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the server, waits for it to finish, and hands back the data directory.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.take().unwrap().send(()).ok();
        self.handle.take().unwrap().await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data_dir, dir)
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        if let Some(ns) = &self.netns {
            return netns::Hosts::channel_into(ns, self.addr.port()).await;
        }
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connecting to the test server")
    }

    pub async fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
            .max_encoding_message_size(CLIENT_MAX_MESSAGE)
    }

    pub async fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
            .max_encoding_message_size(CLIENT_MAX_MESSAGE)
    }

    pub async fn action_cache(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE)
            .max_encoding_message_size(CLIENT_MAX_MESSAGE)
    }

    pub async fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The SHA-256 digest of `data`, as a proto.
pub fn digest(data: &[u8]) -> re::Digest {
    Digest::of(DigestFunction::Sha256, data).to_proto()
}

/// A file entry of a Directory proto holding `data`.
pub fn file_node(name: &str, data: &[u8]) -> re::FileNode {
    re::FileNode {
        name: name.into(),
        digest: Some(digest(data)),
        ..Default::default()
    }
}

/// A subdirectory entry of a Directory proto naming `dir`.
pub fn dir_node(name: &str, dir: &re::Directory) -> re::DirectoryNode {
    re::DirectoryNode {
        name: name.into(),
        digest: Some(digest(&prost::Message::encode_to_vec(dir))),
    }
}

/// `blobs/{hash}/{size}` for `data`.
pub fn blob_path(data: &[u8]) -> String {
    let d = digest(data);
    format!("blobs/{}/{}", d.hash, d.size_bytes)
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate and are repeatable.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads blobs with BatchUpdateBlobs and asserts each succeeded.
pub async fn upload_blobs(server: &TestServer, blobs: &[&[u8]]) {
    let mut cas = server.cas().await;
    let response = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|b| re::batch_update_blobs_request::Request {
                    digest: Some(digest(b)),
                    data: bytes::Bytes::copy_from_slice(b),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in response.responses {
        assert_eq!(r.status.unwrap().code, 0, "upload of {:?} failed", r.digest);
    }
}

/// Asserts that `result` is an error with `code` whose message contains every one of
/// `needles`, so each test also checks that the server says something useful. Returns the
/// status for further checks.
#[track_caller]
pub fn expect_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> tonic::Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {:?}",
        status.message()
    );
    assert_message(status.message(), needles);
    status
}

/// Like [`expect_status`], for the `google.rpc.Status` carried inside batch responses.
#[track_caller]
pub fn expect_rpc_status(
    status: Option<&rexd::proto::rpc::Status>,
    code: tonic::Code,
    needles: &[&str],
) {
    let status = status.expect("a per-item status");
    assert_eq!(
        status.code, code as i32,
        "wrong per-item code (want {code:?}); message: {:?}",
        status.message
    );
    assert_message(&status.message, needles);
}

#[track_caller]
fn assert_message(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "the message should mention {needle:?}, but it is {message:?}"
        );
    }
}

/// A fresh ByteStream upload resource name for `data`: `uploads/{uuid}/blobs/{hash}/{size}`.
pub fn upload_path(data: &[u8]) -> String {
    format!("uploads/{}/{}", uuid::Uuid::new_v4(), blob_path(data))
}

/// Where rexd keeps the blob `data` under the data directory `dir`, so tests can make a blob
/// disappear between a `stop()` and a `start_in()`.
pub fn blob_file(dir: &std::path::Path, data: &[u8]) -> std::path::PathBuf {
    let d = digest(data);
    dir.join("cas")
        .join("sha256")
        .join(&d.hash[..2])
        .join(format!("{}-{}", d.hash, d.size_bytes))
}

/// The default instance's Capabilities.
pub async fn server_capabilities(server: &TestServer) -> re::ServerCapabilities {
    server
        .capabilities()
        .await
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// The digests FindMissingBlobs reports missing of `digests`.
pub async fn missing_of(server: &TestServer, digests: Vec<re::Digest>) -> Vec<re::Digest> {
    server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: digests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

/// Whether the CAS reports `data` as present, through FindMissingBlobs.
pub async fn is_stored(server: &TestServer, data: &[u8]) -> bool {
    let missing = server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(data)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    missing.is_empty()
}

/// Loopback HTTP origin for Remote Asset download tests.
pub mod origin;

/// BuildStream 1.6 (Debian) against rexd as its Remote Asset artifact cache.
pub mod bst1;

/// Certificates made with rcgen, and TLS channels that use them.
pub mod tls;

impl TestServer {
    /// Sends the shutdown signal without waiting for the server to stop, so a test can watch
    /// a graceful shutdown while it drains.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server task to end (after [`TestServer::begin_shutdown`]); returns what
    /// `rexd::server::run` returned.
    pub async fn join(&mut self) -> Result<(), rexd::Error> {
        self.handle
            .take()
            .expect("the server was already joined")
            .await
            .expect("the server task panicked")
    }
}

/// Remote Asset request helpers.
pub mod asset;

/// The one allocator of worker uid ranges: a `sandbox.run_as_uid_base` that no other server
/// of this test process, nor (barring a pid clash) of another test process, uses, with room
/// for 256 workers. With the plain backend, a worker kills every process of its uid when an
/// action ends; servers sharing worker uids would kill each other's actions.
pub fn private_uid_base() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed) % 256;
    1_000_000 + (std::process::id() % 4096) * 65_536 + block * 256
}

/// [`exec::start_plain`] for tests that set many workers: checks that they fit the uid range
/// [`private_uid_base`] gives each server.
pub async fn start_plain_isolated(edit: impl FnOnce(&mut Config)) -> TestServer {
    exec::start_plain(|c| {
        edit(c);
        let workers = rexd::config::Settings::new(c.clone())
            .unwrap()
            .execution
            .workers;
        assert!(workers <= 256, "at most 256 workers");
    })
    .await
}
