//! Back-pressure limits: a full execution queue answers RESOURCE_EXHAUSTED with a
//! `google.rpc.RetryInfo`, and blobs over `limits.max_blob_size` are refused (ByteStream
//! Write, batch entries) while Capabilities advertises the limit.

mod common;

use bytesize::ByteSize;
use common::exec::{self, outside_dir, sh, wait_for_file};
use common::start_plain_isolated as start_plain;
use common::{TestServer, digest, expect_rpc_status, expect_status, pseudo_random, upload_path};
use prost::Message;
use rexd::proto::bytestream::WriteRequest;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use rexd::proto::rpc;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_with_retry_info() {
    let server = start_plain(|c| {
        c.execution.local_workers = Some(1);
        c.execution.max_queued = 1;
    })
    .await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let running = sh(format!("{}; echo running", wait_for_file(&go))).build();
    let queued = sh(format!("{}; echo queued", wait_for_file(&go))).build();
    let rejected = sh("echo rejected").build();
    for action in [&running, &queued, &rejected] {
        action.upload(&server).await;
    }

    let mut running_stream = exec::start(&server, running.request()).await.unwrap();
    exec::wait_for_stage(&mut running_stream, Stage::Executing).await;
    let mut queued_stream = exec::start(&server, queued.request()).await.unwrap();
    let first = exec::next_update(&mut queued_stream).await;
    assert_eq!(exec::stage(&first), Stage::Queued);

    let status = expect_status(
        exec::start(&server, rejected.request()).await,
        Code::ResourceExhausted,
        &["queue"],
    );
    let details = rpc::Status::decode(status.details()).expect("google.rpc.Status details");
    assert_eq!(details.code, Code::ResourceExhausted as i32);
    let retry = details
        .details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap_or_else(|| panic!("no RetryInfo among {:?}", details.details));
    let retry = rpc::RetryInfo::decode(&retry.value[..]).unwrap();
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay.seconds > 0 || delay.nanos > 0, "{delay:?}");

    // Joining an identical action already queued is not a new queue entry.
    let mut joined = exec::start(&server, queued.request())
        .await
        .expect("an identical action merges instead of queueing");

    // Once the queue drains, the rejected action is accepted.
    std::fs::write(&go, "").unwrap();
    for stream in [&mut running_stream, &mut queued_stream, &mut joined] {
        let op = exec::wait_for_stage(stream, Stage::Completed).await;
        assert_eq!(exec::status_code(&exec::response(&op)), Code::Ok);
    }
    let response = exec::execute(&server, rejected.request()).await;
    assert_eq!(response.result.unwrap().exit_code, 0);
}

const LIMIT: u64 = 1000;

async fn limited_server() -> TestServer {
    TestServer::start_with(|c| c.limits.max_blob_size = ByteSize::b(LIMIT)).await
}

async fn write(server: &TestServer, data: &[u8]) -> Result<i64, tonic::Status> {
    let message = WriteRequest {
        resource_name: upload_path(data),
        write_offset: 0,
        finish_write: true,
        data: data.to_vec().into(),
    };
    server
        .bytestream()
        .await
        .write(futures::stream::iter(vec![message]))
        .await
        .map(|r| r.into_inner().committed_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_write_over_max_blob_size_is_invalid_argument() {
    let server = limited_server().await;
    let big = pseudo_random(LIMIT as usize + 1, 1);
    expect_status(
        write(&server, &big).await,
        Code::InvalidArgument,
        &["max_blob_size", &LIMIT.to_string()],
    );
    assert!(!common::is_stored(&server, &big).await);
    // Exactly at the limit is fine.
    let at_limit = pseudo_random(LIMIT as usize, 2);
    assert_eq!(write(&server, &at_limit).await.unwrap(), LIMIT as i64);
    assert!(common::is_stored(&server, &at_limit).await);

    // The limit goes by the digest, before any byte is read: a compressed upload whose
    // digest is over the limit is refused just the same.
    let compressed = zstd::encode_all(&big[..], 3).unwrap();
    let d = digest(&big);
    let message = WriteRequest {
        resource_name: format!(
            "uploads/{}/compressed-blobs/zstd/{}/{}",
            uuid::Uuid::new_v4(),
            d.hash,
            d.size_bytes
        ),
        write_offset: 0,
        finish_write: true,
        data: compressed.into(),
    };
    expect_status(
        server
            .bytestream()
            .await
            .write(futures::stream::iter(vec![message]))
            .await,
        Code::InvalidArgument,
        &["max_blob_size"],
    );
    // No upload file is left behind.
    let tmp = server.data_dir.path().join("tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("upload-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_entry_over_max_blob_size_is_invalid_argument() {
    let server = limited_server().await;
    let small = pseudo_random(10, 3);
    let big = pseudo_random(LIMIT as usize + 1, 4);
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: [&small, &big]
                .iter()
                .map(|b| re::batch_update_blobs_request::Request {
                    digest: Some(digest(b)),
                    data: b.to_vec().into(),
                    compressor: 0,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("the batch as a whole is accepted")
        .into_inner();
    assert_eq!(response.responses.len(), 2);
    let by_digest = |d: &re::Digest| {
        response
            .responses
            .iter()
            .find(|r| r.digest.as_ref() == Some(d))
            .unwrap_or_else(|| panic!("no response for {d:?}"))
    };
    expect_rpc_status(by_digest(&digest(&small)).status.as_ref(), Code::Ok, &[]);
    expect_rpc_status(
        by_digest(&digest(&big)).status.as_ref(),
        Code::InvalidArgument,
        &["max_blob_size"],
    );
    assert!(common::is_stored(&server, &small).await);
    assert!(!common::is_stored(&server, &big).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_max_blob_size() {
    let server = limited_server().await;
    let caps = common::server_capabilities(&server).await;
    assert_eq!(
        caps.cache_capabilities.unwrap().max_cas_blob_size_bytes,
        LIMIT as i64
    );
    // Unlimited by default: 0.
    let server = TestServer::start().await;
    let caps = common::server_capabilities(&server).await;
    assert_eq!(caps.cache_capabilities.unwrap().max_cas_blob_size_bytes, 0);
}
