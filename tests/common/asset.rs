//! Remote Asset clients and request helpers shared by the asset tests: push and fetch with
//! short argument lists, SRI values, and a small Directory tree to push.
#![allow(dead_code)]

use base64::Engine as _;
use prost::Message;
use rexd::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse,
    PushBlobRequest, PushDirectoryRequest, Qualifier, fetch_client::FetchClient,
    push_client::PushClient,
};
use rexd::proto::remote_execution as re;
use sha2::Digest as _;
use tonic::Status;
use tonic::transport::Channel;

use super::{TestServer, digest, file_node};

/// The reference keys rexd holds for `uri`.
pub fn uri_keys(server: &TestServer, uri: &str) -> Vec<rexd::storage::asset_store::AssetKey> {
    let keys = server.ctx.asset.store().keys();
    keys.into_iter().filter(|k| k.uri == uri).collect()
}

pub async fn fetch_client(server: &TestServer) -> FetchClient<Channel> {
    FetchClient::new(server.channel().await)
}

pub async fn push_client(server: &TestServer) -> PushClient<Channel> {
    PushClient::new(server.channel().await)
}

pub fn qualifiers(pairs: &[(&str, &str)]) -> Vec<Qualifier> {
    pairs
        .iter()
        .map(|(name, value)| Qualifier {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

pub fn uris(list: &[&str]) -> Vec<String> {
    list.iter().map(|u| u.to_string()).collect()
}

pub fn sri_sha256(data: &[u8]) -> String {
    let hash = sha2::Sha256::digest(data);
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

pub async fn push_blob(
    server: &TestServer,
    uri_list: &[&str],
    quals: &[(&str, &str)],
    data: &[u8],
) -> Result<(), Status> {
    push_client(server)
        .await
        .push_blob(PushBlobRequest {
            uris: uris(uri_list),
            qualifiers: qualifiers(quals),
            blob_digest: Some(digest(data)),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

pub async fn fetch_blob(
    server: &TestServer,
    uri_list: &[&str],
    quals: &[(&str, &str)],
) -> Result<FetchBlobResponse, Status> {
    fetch_blob_with(
        server,
        FetchBlobRequest {
            uris: uris(uri_list),
            qualifiers: qualifiers(quals),
            ..Default::default()
        },
    )
    .await
}

pub async fn fetch_blob_with(
    server: &TestServer,
    request: FetchBlobRequest,
) -> Result<FetchBlobResponse, Status> {
    fetch_client(server)
        .await
        .fetch_blob(request)
        .await
        .map(tonic::Response::into_inner)
}

pub async fn fetch_dir(server: &TestServer, uri: &str) -> Result<FetchDirectoryResponse, Status> {
    fetch_client(server)
        .await
        .fetch_directory(FetchDirectoryRequest {
            uris: uris(&[uri]),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts an OK reply naming `data` and returns it.
#[track_caller]
pub fn assert_found(reply: Result<FetchBlobResponse, Status>, data: &[u8]) -> FetchBlobResponse {
    let reply = reply.expect("FetchBlob succeeds");
    let status = reply.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "reply status: {status:?}");
    assert_eq!(reply.blob_digest, Some(digest(data)));
    reply
}

/// A small tree: root { a.txt, sub/ { b.txt } }. Returns (root digest, every blob).
pub fn tree(a: &[u8], b: &[u8]) -> (re::Digest, Vec<Vec<u8>>) {
    let sub = re::Directory {
        files: vec![file_node("b.txt", b)],
        ..Default::default()
    }
    .encode_to_vec();
    let root = re::Directory {
        files: vec![file_node("a.txt", a)],
        directories: vec![re::DirectoryNode {
            name: "sub".into(),
            digest: Some(digest(&sub)),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    (digest(&root), vec![a.to_vec(), b.to_vec(), sub, root])
}

pub async fn push_dir(server: &TestServer, uri: &str, root: &re::Digest) -> Result<(), Status> {
    push_client(server)
        .await
        .push_directory(PushDirectoryRequest {
            uris: uris(&[uri]),
            root_directory_digest: Some(root.clone()),
            ..Default::default()
        })
        .await
        .map(|_| ())
}
