//! Remote Asset downloads over the wire: FetchBlob with `asset.allow_downloads` fetches an
//! http(s) URI from a loopback origin the test runs, checks `checksum.sri` before keeping
//! anything, shares one download among concurrent fetches, and reports origin failures in the
//! reply's `status`.

mod common;

use std::time::Duration;

use common::asset::{assert_found, fetch_blob, sri_sha256, uri_keys};
use common::origin::{Origin, Route};
use common::{TestServer, expect_status, is_stored};
use rexd::proto::asset::FetchBlobResponse;
use tonic::{Code, Status};

async fn downloading_server(edit: impl FnOnce(&mut rexd::config::AssetConfig)) -> TestServer {
    TestServer::start_with(|c| {
        c.asset.allow_downloads = true;
        edit(&mut c.asset);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_with_checksum_shared_by_concurrent_fetches() {
    let origin = Origin::start().await;
    let body = common::pseudo_random(300_000, 7);
    origin.route(
        "/dist/pkg.tar",
        Route {
            status: 200,
            body: body.clone(),
            delay: Duration::from_millis(500),
        },
    );
    let server = downloading_server(|_| {}).await;
    let url = origin.url("/dist/pkg.tar");
    let sri = sri_sha256(&body);
    let quals = [("checksum.sri", sri.as_str())];

    let url_list = [url.as_str()];
    let (a, b) = tokio::join!(
        fetch_blob(&server, &url_list, &quals),
        fetch_blob(&server, &url_list, &quals)
    );
    assert_eq!(assert_found(a, &body).uri, url);
    assert_found(b, &body);
    assert_eq!(origin.hits_on("/dist/pkg.tar"), 1, "one shared download");
    let agent = &origin.hits()[0].user_agent;
    assert!(agent.starts_with("rexd/"), "User-Agent {agent:?}");
    assert!(
        is_stored(&server, &body).await,
        "the download is in the CAS"
    );

    // Later fetches are answered from the stored reference.
    assert_found(fetch_blob(&server, &[&url], &quals).await, &body);
    assert_eq!(origin.hits_on("/dist/pkg.tar"), 1);
    let keys = uri_keys(&server, &url);
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_with_wrong_checksum_stores_nothing() {
    let origin = Origin::start().await;
    let body = b"the real content".to_vec();
    origin.serve("/file", &body);
    let server = downloading_server(|_| {}).await;
    let url = origin.url("/file");
    let wrong = sri_sha256(b"something else");

    let reply = fetch_blob(&server, &[&url], &[("checksum.sri", &wrong)])
        .await
        .expect("a failed download is a reply, not an RPC error");
    let status = reply.status.unwrap();
    assert_eq!(status.code, Code::Aborted as i32, "{status:?}");
    assert!(
        status.message.contains("checksum mismatch") && status.message.contains(&wrong),
        "{:?}",
        status.message
    );
    assert_eq!(reply.uri, url);
    assert_eq!(reply.blob_digest, None);
    assert!(!is_stored(&server, &body).await, "nothing kept in the CAS");
    assert!(uri_keys(&server, &url).is_empty());

    // Not cached: the next attempt downloads again. A malformed checksum is the client's error.
    let _ = fetch_blob(&server, &[&url], &[("checksum.sri", &wrong)]).await;
    assert_eq!(origin.hits_on("/file"), 2);
    expect_status(
        fetch_blob(&server, &[&url], &[("checksum.sri", "sha256-???")]).await,
        Code::InvalidArgument,
        &["checksum.sri"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_failures_are_reply_statuses() {
    let origin = Origin::start().await;
    origin.serve("/big", &[7u8; 2048]);
    origin.serve("/ok", b"ok");
    let server = downloading_server(|a| a.max_download_size = bytesize::ByteSize::kib(1)).await;

    let status = |reply: Result<FetchBlobResponse, Status>| reply.unwrap().status.unwrap();
    let s = status(fetch_blob(&server, &[&origin.url("/absent")], &[]).await);
    assert_eq!(s.code, Code::NotFound as i32, "{s:?}");
    assert!(s.message.contains("404"), "{:?}", s.message);

    let s = status(fetch_blob(&server, &[&origin.url("/big")], &[]).await);
    assert_eq!(s.code, Code::ResourceExhausted as i32, "{s:?}");
    assert!(s.message.contains("max_download_size"), "{:?}", s.message);

    // Nothing listens on port 1.
    let s = status(fetch_blob(&server, &["http://127.0.0.1:1/x"], &[]).await);
    assert_eq!(s.code, Code::Unavailable as i32, "{s:?}");

    // The first URI fails, the second answers.
    let reply = fetch_blob(&server, &[&origin.url("/absent"), &origin.url("/ok")], &[]).await;
    assert_eq!(assert_found(reply, b"ok").uri, origin.url("/ok"));

    // A URI that is not http(s) and has no reference is a plain miss.
    expect_status(
        fetch_blob(&server, &["urn:example:nothing"], &[]).await,
        Code::NotFound,
        &["only http and https"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_only_when_allowed_and_from_allowed_hosts() {
    let origin = Origin::start().await;
    origin.serve("/file", b"content");

    let server = downloading_server(|a| a.allowed_hosts = vec!["mirror.example.com".into()]).await;
    let reply = fetch_blob(&server, &[&origin.url("/file")], &[])
        .await
        .unwrap();
    let s = reply.status.unwrap();
    assert_eq!(s.code, Code::PermissionDenied as i32, "{s:?}");
    assert!(
        s.message.contains("127.0.0.1") && s.message.contains("allowed_hosts"),
        "{:?}",
        s.message
    );
    drop(server);

    // Off by default: a miss, and no request to the origin.
    let server = TestServer::start().await;
    expect_status(
        fetch_blob(&server, &[&origin.url("/file")], &[]).await,
        Code::NotFound,
        &["no blob reference"],
    );
    assert_eq!(origin.hits().len(), 0);

    let server = downloading_server(|a| a.allowed_hosts = vec!["127.0.0.1".into()]).await;
    assert_found(
        fetch_blob(&server, &[&origin.url("/file")], &[]).await,
        b"content",
    );
    assert_eq!(origin.hits().len(), 1);
}
