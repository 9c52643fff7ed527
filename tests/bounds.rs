//! State that grows with traffic stays at its bound: each test pushes far past a bound with
//! small traffic and counts what the server retains. Nothing here is timed.

mod common;

use bytes::Bytes;
use common::exec::*;
use common::{TestServer, digest, expect_status, pseudo_random, upload_blobs, upload_path};
use rexd::proto::bytestream::{QueryWriteStatusRequest, WriteRequest};
use rexd::proto::longrunning::{GetOperationRequest, ListOperationsRequest};
use rexd::proto::remote_execution as re;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const MIB: usize = 1024 * 1024;

fn engine(server: &TestServer) -> &rexd::execution::Engine {
    server
        .ctx
        .execution
        .as_deref()
        .expect("execution is enabled")
}

/// Runs a distinct action to completion; returns its operation's name.
async fn run_distinct(server: &TestServer, n: usize) -> String {
    let prepared = sh(format!("echo {n}")).build();
    prepared.upload(server).await;
    let updates = collect(start(server, prepared.request()).await.unwrap()).await;
    let last = updates.last().unwrap();
    assert!(last.done);
    last.name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_operations_stay_at_max_finished_operations() {
    let server = start_plain(|cfg| cfg.execution.max_finished_operations = 5).await;
    let mut names = Vec::new();
    for n in 0..40 {
        names.push(run_distinct(&server, n).await);
    }
    let ops = engine(&server).operations();
    assert_eq!(ops.finished_len(), 5);
    assert_eq!(ops.len(), 5, "nothing else is retained once all are done");
    for name in &names[35..] {
        assert!(ops.get(name).is_some(), "the newest are kept");
    }
    assert!(ops.get(&names[0]).is_none(), "the oldest is forgotten");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hit_executes_retain_no_operation() {
    let server = start_plain(|_| {}).await;
    let prepared = sh("echo cached").build();
    prepared.upload(&server).await;
    assert!(!execute(&server, prepared.request()).await.cached_result);
    let retained = engine(&server).operations().len();
    for _ in 0..2000 {
        assert!(execute(&server, prepared.request()).await.cached_result);
    }
    assert_eq!(engine(&server).operations().len(), retained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_and_get_operation_on_a_pruned_operation_are_not_found() {
    let server = start_plain(|cfg| cfg.execution.max_finished_operations = 1).await;
    let first = run_distinct(&server, 0).await;
    run_distinct(&server, 1).await;
    let waited = execution_client(&server)
        .await
        .wait_execution(re::WaitExecutionRequest {
            name: first.clone(),
        })
        .await;
    expect_status(waited.map(|_| ()), Code::NotFound, &[&first]);
    let got = operations_client(&server)
        .await
        .get_operation(GetOperationRequest {
            name: first.clone(),
        })
        .await;
    expect_status(got, Code::NotFound, &[&first]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_operations_rejects_page_tokens_it_did_not_issue() {
    let server = start_plain(|_| {}).await;
    for token in [
        "garbage",
        "operations/not-a-uuid",
        "other/operations/00000000-0000-0000-0000-000000000000",
    ] {
        let listed = operations_client(&server)
            .await
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                page_token: token.into(),
                ..Default::default()
            })
            .await;
        expect_status(listed, Code::InvalidArgument, &["page_token", token]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_pins_add_no_state() {
    let server = TestServer::start().await;
    let present: Vec<Vec<u8>> = (0..10).map(|i| pseudo_random(100, i)).collect();
    upload_blobs(
        &server,
        &present.iter().map(Vec::as_slice).collect::<Vec<_>>(),
    )
    .await;
    let indexed = server.ctx.cas.index().len();
    let mut cas = server.cas().await;
    for round in 0..20u64 {
        let mut digests: Vec<re::Digest> = present.iter().map(|b| digest(b)).collect();
        digests.extend((0..5000).map(|i| digest(format!("absent-{round}-{i}").as_bytes())));
        let missing = cas
            .find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: digests,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        assert_eq!(missing.len(), 5000);
    }
    // A pin is a deadline on an existing index entry: 100,000 asked-about digests later,
    // the index holds exactly the blobs stored.
    assert_eq!(server.ctx.cas.index().len(), indexed);
}

/// Opens a Write stream for `data` and sends its first `sent` bytes without finishing;
/// returns the sender that keeps the stream open, and the resource name.
async fn open_write(
    server: &TestServer,
    data: &[u8],
    sent: usize,
) -> (
    mpsc::Sender<WriteRequest>,
    String,
    tokio::task::JoinHandle<()>,
) {
    let name = upload_path(data);
    let (tx, rx) = mpsc::channel(4);
    tx.send(WriteRequest {
        resource_name: name.clone(),
        write_offset: 0,
        finish_write: false,
        data: Bytes::copy_from_slice(&data[..sent]),
    })
    .await
    .unwrap();
    let mut bs = server.bytestream().await;
    let call = tokio::spawn(async move {
        let _ = bs.write(ReceiverStream::new(rx)).await;
    });
    (tx, name, call)
}

/// Resumes the upload `name` at `offset` with the rest of `data`, and checks it commits.
async fn finish_from(server: &TestServer, name: &str, data: &[u8], offset: usize) {
    let rest = WriteRequest {
        resource_name: name.to_string(),
        write_offset: offset as i64,
        finish_write: true,
        data: Bytes::copy_from_slice(&data[offset..]),
    };
    let response = server
        .bytestream()
        .await
        .write(futures::stream::iter([rest]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, data.len() as i64);
}

async fn committed(server: &TestServer, name: &str) -> Result<i64, tonic::Status> {
    server
        .bytestream()
        .await
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.to_string(),
        })
        .await
        .map(|r| r.into_inner().committed_size)
}

/// Asks QueryWriteStatus until the live write `name` has committed `want` bytes. Once the
/// first Write reached the server it is never NOT_FOUND: only the count grows.
async fn wait_committed(server: &TestServer, name: &str, want: usize) {
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen < want as i64 {
        match committed(server, name).await {
            Ok(n) => seen = n,
            Err(status) if seen == 0 && status.code() == Code::NotFound => {}
            Err(status) => panic!("QueryWriteStatus of a live write: {status:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {seen}");
    }
    assert_eq!(seen, want as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_uploads_stay_at_max_resumable_uploads() {
    let server = TestServer::start_with(|cfg| cfg.limits.max_resumable_uploads = 4).await;
    for seed in 0..30 {
        let data = pseudo_random(64 * 1024, seed);
        let (tx, name, call) = open_write(&server, &data, 1000).await;
        let uploads = server.ctx.uploads.clone();
        let key_seen = name.clone();
        eventually("the write is live", || uploads.counts().0 == 1).await;
        drop(tx);
        call.await.unwrap();
        eventually("the write is parked", || uploads.counts().0 == 0).await;
        assert_eq!(committed(&server, &key_seen).await.unwrap(), 1000);
    }
    assert_eq!(server.ctx.uploads.counts(), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_write_status_answers_while_writing_and_right_after_the_stream_breaks() {
    let server = TestServer::start().await;
    let data = pseudo_random(4 * MIB, 7);
    let (tx, name, call) = open_write(&server, &data, 2 * MIB).await;
    wait_committed(&server, &name, 2 * MIB).await;
    // The client gives up on the stream; the very next query still knows the upload.
    drop(tx);
    assert_eq!(committed(&server, &name).await.unwrap(), 2 * MIB as i64);
    call.await.unwrap();
    assert_eq!(committed(&server, &name).await.unwrap(), 2 * MIB as i64);
    // And it resumes from there.
    finish_from(&server, &name, &data, 2 * MIB).await;
    assert_eq!(server.ctx.uploads.counts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_write_takes_over_a_stream_still_open() {
    let server = TestServer::start().await;
    let data = pseudo_random(MIB, 9);
    let (tx, name, call) = open_write(&server, &data, MIB / 2).await;
    wait_committed(&server, &name, MIB / 2).await;
    // The old stream stays open (its client vanished without a reset); the resume wins.
    finish_from(&server, &name, &data, MIB / 2).await;
    drop(tx);
    call.await.unwrap();
    assert_eq!(server.ctx.uploads.counts(), (0, 0));
}
