//! Remote Asset Fetch and Push over the wire: references from URIs (plus qualifiers) to blobs
//! and directory trees, their expiry and persistence, and the completeness guarantee (a
//! reference is served only while all its content is in the CAS). Downloads from origin are
//! in `asset_download.rs`.

mod common;

use std::time::{Duration, SystemTime};

use common::asset::{
    assert_found, fetch_blob, fetch_blob_with, fetch_client, fetch_dir, push_blob, push_client,
    push_dir, qualifiers, tree, uris,
};
use common::{TestServer, blob_file, digest, expect_status, is_stored, upload_blobs};
use prost::Message;
use rexd::proto::asset::{
    FetchBlobRequest, FetchDirectoryRequest, PushBlobRequest, PushDirectoryRequest,
};
use rexd::proto::remote_execution as re;
use rexd::proto::rpc;
use tonic::Code;

#[tokio::test]
async fn push_then_fetch_blob_with_exact_qualifiers() {
    let server = TestServer::start().await;
    let data = b"asset content";
    upload_blobs(&server, &[data]).await;
    let uri = "https://example.com/asset.tar.gz";
    let quals = [
        ("resource_type", "application/x-tar"),
        ("vcs.commit", "abc"),
    ];
    push_blob(&server, &[uri], &quals, data).await.unwrap();

    let reply = assert_found(fetch_blob(&server, &[uri], &quals).await, data);
    assert_eq!(reply.uri, uri);
    assert_eq!(reply.qualifiers, qualifiers(&quals));
    assert_eq!(reply.expires_at, None);
    // Qualifier order does not matter; the first URI with a reference answers.
    let reversed = [quals[1], quals[0]];
    let reply = assert_found(
        fetch_blob(&server, &["https://mirror.example/x", uri], &reversed).await,
        data,
    );
    assert_eq!(reply.uri, uri);

    // A missing, extra or different qualifier is a different reference: a miss.
    for other in [
        &quals[..1],
        &[quals[0], quals[1], ("extra", "1")][..],
        &[quals[0], ("vcs.commit", "abd")][..],
    ] {
        expect_status(
            fetch_blob(&server, &[uri], other).await,
            Code::NotFound,
            &["no blob reference", uri],
        );
    }
    // Blob and directory references live apart.
    expect_status(
        fetch_dir(&server, uri).await,
        Code::NotFound,
        &["no directory reference"],
    );
    // Duplicate qualifier names and unknown instances are the client's mistake.
    expect_status(
        fetch_blob(&server, &[uri], &[("a", "1"), ("a", "2")]).await,
        Code::InvalidArgument,
        &["\"a\"", "more than once"],
    );
    expect_status(
        fetch_blob_with(
            &server,
            FetchBlobRequest {
                instance_name: "nope".into(),
                uris: uris(&[uri]),
                ..Default::default()
            },
        )
        .await,
        Code::InvalidArgument,
        &["unknown instance name"],
    );
}

#[tokio::test]
async fn push_then_fetch_directory_checks_the_whole_tree() {
    let server = TestServer::start().await;
    let (root, blobs) = tree(b"file a", b"file b");
    let uri = "urn:fdc:buildstream.build:2020:v1:project/element/0123";

    // Nothing uploaded yet: the root is missing.
    expect_status(
        push_dir(&server, uri, &root).await,
        Code::FailedPrecondition,
        &["missing from the CAS", &root.hash],
    );
    // All but a file deep in the tree: that file is named.
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    upload_blobs(&server, &[refs[0], refs[2], refs[3]]).await;
    let b = digest(b"file b");
    let status = expect_status(
        push_dir(&server, uri, &root).await,
        Code::FailedPrecondition,
        &["1 blob(s) missing", &b.hash],
    );
    let details = rpc::Status::decode(status.details()).expect("a google.rpc.Status in details");
    let failure = rpc::PreconditionFailure::decode(&details.details[0].value[..]).unwrap();
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", b.hash, b.size_bytes)
    );
    expect_status(fetch_dir(&server, uri).await, Code::NotFound, &[uri]);

    upload_blobs(&server, &[refs[1]]).await;
    push_dir(&server, uri, &root).await.unwrap();
    let reply = fetch_dir(&server, uri).await.unwrap();
    assert_eq!(reply.status.unwrap_or_default().code, 0);
    assert_eq!(reply.root_directory_digest, Some(root));
    assert_eq!(reply.uri, uri);
}

#[tokio::test]
async fn push_names_missing_blobs_and_references() {
    let server = TestServer::start().await;
    let uri = "https://example.com/missing";
    let absent = digest(b"never uploaded");
    expect_status(
        push_blob(&server, &[uri], &[], b"never uploaded").await,
        Code::FailedPrecondition,
        &["missing from the CAS", &absent.hash],
    );

    // The blob is there, but a referenced blob and a referenced tree are not.
    upload_blobs(&server, &[b"present"]).await;
    let (tree_root, _) = tree(b"x", b"y");
    let other = digest(b"referenced blob");
    let result = push_client(&server)
        .await
        .push_blob(PushBlobRequest {
            uris: uris(&[uri]),
            blob_digest: Some(digest(b"present")),
            references_blobs: vec![other.clone()],
            references_directories: vec![tree_root.clone()],
            ..Default::default()
        })
        .await;
    expect_status(
        result,
        Code::FailedPrecondition,
        &["2 blob(s) missing", &other.hash, &tree_root.hash],
    );
    expect_status(fetch_blob(&server, &[uri], &[]).await, Code::NotFound, &[]);
}

#[tokio::test]
async fn requests_without_uris_are_invalid() {
    // BuildStream 1.6 detects Remote Asset support by exactly this INVALID_ARGUMENT.
    let server = TestServer::start().await;
    let mut fetch = fetch_client(&server).await;
    let mut push = push_client(&server).await;
    let needle = ["at least one URI"];
    expect_status(
        fetch.fetch_blob(FetchBlobRequest::default()).await,
        Code::InvalidArgument,
        &needle,
    );
    expect_status(
        fetch
            .fetch_directory(FetchDirectoryRequest::default())
            .await,
        Code::InvalidArgument,
        &needle,
    );
    expect_status(
        push.push_blob(PushBlobRequest::default()).await,
        Code::InvalidArgument,
        &needle,
    );
    expect_status(
        push.push_directory(PushDirectoryRequest::default()).await,
        Code::InvalidArgument,
        &needle,
    );
}

#[tokio::test]
async fn expiry_and_oldest_content_accepted() {
    let server = TestServer::start().await;
    let data = b"expiring";
    upload_blobs(&server, &[data]).await;
    let now = SystemTime::now();
    let push = |uri: &'static str, expire_at: SystemTime| {
        let server = &server;
        async move {
            push_client(server)
                .await
                .push_blob(PushBlobRequest {
                    uris: uris(&[uri]),
                    blob_digest: Some(digest(data)),
                    expire_at: Some(expire_at.into()),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    push("https://example.com/past", now - Duration::from_secs(1)).await;
    push(
        "https://example.com/soon",
        now + Duration::from_millis(1500),
    )
    .await;
    let later = now + Duration::from_secs(3600);
    push("https://example.com/later", later).await;

    expect_status(
        fetch_blob(&server, &["https://example.com/past"], &[]).await,
        Code::NotFound,
        &[],
    );
    let reply = assert_found(
        fetch_blob(&server, &["https://example.com/later"], &[]).await,
        data,
    );
    let expires = SystemTime::try_from(reply.expires_at.expect("expires_at")).unwrap();
    assert!(
        expires.duration_since(later).unwrap_or_default() < Duration::from_millis(1)
            && later.duration_since(expires).unwrap_or_default() < Duration::from_millis(1),
        "expires_at {expires:?} is the pushed {later:?}"
    );
    assert_found(
        fetch_blob(&server, &["https://example.com/soon"], &[]).await,
        data,
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    expect_status(
        fetch_blob(&server, &["https://example.com/soon"], &[]).await,
        Code::NotFound,
        &[],
    );

    // oldest_content_accepted: content pushed before it is absent.
    let fetch_since = |oldest: SystemTime| {
        fetch_blob_with(
            &server,
            FetchBlobRequest {
                uris: uris(&["https://example.com/later"]),
                oldest_content_accepted: Some(oldest.into()),
                ..Default::default()
            },
        )
    };
    assert_found(fetch_since(now - Duration::from_secs(60)).await, data);
    expect_status(fetch_since(SystemTime::now()).await, Code::NotFound, &[]);
    // Pushing again renews it.
    push("https://example.com/later", later).await;
    assert_found(fetch_since(now + Duration::from_secs(1)).await, data);
}

#[tokio::test]
async fn references_survive_restart_but_not_their_content() {
    let server = TestServer::start().await;
    let data = b"persistent asset";
    upload_blobs(&server, &[data]).await;
    let (root, blobs) = tree(b"tree file a", b"tree file b");
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    upload_blobs(&server, &refs).await;
    let quals = [("checksum.sri", "sha256-whatever")];
    push_blob(&server, &["https://example.com/p"], &quals, data)
        .await
        .unwrap();
    push_dir(&server, "urn:example:dir", &root).await.unwrap();

    let server = TestServer::start_in(server.stop().await, |_| {}).await;
    assert_found(
        fetch_blob(&server, &["https://example.com/p"], &quals).await,
        data,
    );
    let reply = fetch_dir(&server, "urn:example:dir").await.unwrap();
    assert_eq!(reply.root_directory_digest, Some(root.clone()));

    // Content removed behind rexd's back while it is stopped: the references stay on disk
    // but are not served.
    let dir = server.stop().await;
    std::fs::remove_file(blob_file(dir.path(), data)).unwrap();
    std::fs::remove_file(blob_file(dir.path(), b"tree file b")).unwrap();
    let server = TestServer::start_in(dir, |_| {}).await;
    assert!(!is_stored(&server, data).await);
    expect_status(
        fetch_blob(&server, &["https://example.com/p"], &quals).await,
        Code::NotFound,
        &[],
    );
    expect_status(
        fetch_dir(&server, "urn:example:dir").await,
        Code::NotFound,
        &[],
    );
    // Uploading the content again brings them back.
    upload_blobs(&server, &[data, b"tree file b"]).await;
    assert_found(
        fetch_blob(&server, &["https://example.com/p"], &quals).await,
        data,
    );
    assert_eq!(
        fetch_dir(&server, "urn:example:dir")
            .await
            .unwrap()
            .root_directory_digest,
        Some(root)
    );
}

#[tokio::test]
async fn digest_functions_keep_separate_references() {
    use rexd::digest::{Digest, DigestFunction};
    let server = TestServer::start().await;
    let data = b"hashed with blake3";
    let blake3 = Digest::of(DigestFunction::Blake3, data).to_proto();
    let function = re::digest_function::Value::Blake3 as i32;
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(blake3.clone()),
                data: bytes::Bytes::from_static(data),
                compressor: 0,
            }],
            digest_function: function,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    let uri = "https://example.com/b3";
    push_client(&server)
        .await
        .push_blob(PushBlobRequest {
            uris: uris(&[uri]),
            blob_digest: Some(blake3.clone()),
            digest_function: function,
            ..Default::default()
        })
        .await
        .unwrap();

    let reply = fetch_blob_with(
        &server,
        FetchBlobRequest {
            uris: uris(&[uri]),
            digest_function: function,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(reply.blob_digest, Some(blake3));
    assert_eq!(reply.digest_function, function);
    // The same URI under SHA-256 (the default) is another reference.
    expect_status(fetch_blob(&server, &[uri], &[]).await, Code::NotFound, &[]);
}
