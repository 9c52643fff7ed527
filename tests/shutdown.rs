//! Graceful shutdown: once told to stop, rexd reports NOT_SERVING, refuses new actions with
//! UNAVAILABLE, fails queued ones at once, and gives running ones `limits.shutdown_grace_secs`
//! to finish. One that finishes in time reaches its waiter as usual; one that does not is
//! killed, with every process it started, and its waiter told UNAVAILABLE. Nothing is left
//! half-written in `{data_dir}/tmp`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::exec::{self, PATIENCE, outside_dir, process_alive, sh, wait_for_file};
use common::{TestServer, expect_status, start_plain_isolated};
use rexd::proto::bytestream::WriteRequest;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn server(grace_secs: u64, workers: usize) -> TestServer {
    start_plain_isolated(|c| {
        c.limits.shutdown_grace_secs = grace_secs;
        c.execution.local_workers = Some(workers);
    })
    .await
}

async fn health(server: &TestServer, service: &str) -> i32 {
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Waits until the overall health (and the Execution service's) is NOT_SERVING.
async fn wait_not_serving(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if health(server, "").await == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never said NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        health(server, "build.bazel.remote.execution.v2.Execution").await,
        ServingStatus::NotServing as i32
    );
}

/// Waits for the server task to end; it must end cleanly.
async fn joined(server: &mut TestServer) {
    tokio::time::timeout(PATIENCE, server.join())
        .await
        .expect("the server did not stop")
        .expect("the server stopped with an error");
}

/// The data directory of a server that has stopped, for a restart on it.
fn take_dir(mut server: TestServer) -> tempfile::TempDir {
    std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap())
}

/// Files in `{data_dir}/tmp`.
fn tmp_files(server: &TestServer) -> Vec<String> {
    let tmp = server.data_dir.path().join("tmp");
    std::fs::read_dir(&tmp)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a pid an action wrote to `path`, waiting for it.
async fn read_pid(path: &Path) -> i32 {
    let mut pid = None;
    exec::eventually("the action to write its pid", || {
        pid = std::fs::read_to_string(path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_action_that_finishes_within_the_grace_reaches_its_waiter() {
    // A generous grace: the drain ends as soon as the action does.
    let mut server = server(60, 2).await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let action = sh(format!("{}; echo finished", wait_for_file(&go))).build();
    let late = sh("echo too late").build();
    action.upload(&server).await;
    late.upload(&server).await;
    let mut stream = exec::start(&server, action.request()).await.unwrap();
    exec::wait_for_stage(&mut stream, Stage::Executing).await;
    assert_eq!(health(&server, "").await, ServingStatus::Serving as i32);

    server.begin_shutdown();
    wait_not_serving(&server).await;
    // No new actions while draining.
    expect_status(
        exec::start(&server, late.request()).await,
        Code::Unavailable,
        &["shutting down"],
    );
    // The cache still answers meanwhile.
    assert!(common::is_stored(&server, &action.action_blob).await);

    std::fs::write(&go, "").unwrap();
    let op = exec::wait_for_stage(&mut stream, Stage::Completed).await;
    let response = exec::response(&op);
    assert_eq!(exec::status_code(&response), Code::Ok, "{response:?}");
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream should end");
    assert!(matches!(end, Ok(None)), "{end:?}");

    joined(&mut server).await;
    assert!(tmp_files(&server).is_empty(), "{:?}", tmp_files(&server));
    // Its result was cached before the server stopped: a restart serves it. Its stdout is
    // read there, as the server stops serving the moment the drain ends, which races any
    // read made after the action finished.
    let server = TestServer::start_in(take_dir(server), |_| {}).await;
    assert_eq!(
        exec::read_text(&server, &result.stdout_digest).await,
        "finished\n"
    );
    let response = exec::execute(&server, action.request()).await;
    assert!(response.cached_result, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_action_that_outlives_the_grace_is_killed_and_its_waiter_told_unavailable() {
    let mut server = server(1, 2).await;
    let outside = outside_dir();
    let go = outside.path().join("never");
    let pid_file = outside.path().join("pid");
    let child_file = outside.path().join("child");
    // A shell that also leaves a background child behind.
    let action = sh(format!(
        "sleep 1000 & echo $! > '{}'; echo $$ > '{}'; {}",
        child_file.display(),
        pid_file.display(),
        wait_for_file(&go)
    ))
    .build();
    action.upload(&server).await;
    let mut stream = exec::start(&server, action.request()).await.unwrap();
    // Another client watching the same operation.
    let mut second = exec::start(&server, action.request()).await.unwrap();
    exec::wait_for_stage(&mut stream, Stage::Executing).await;
    let pid = read_pid(&pid_file).await;
    let child = read_pid(&child_file).await;
    assert!(process_alive(pid) && process_alive(child));

    server.begin_shutdown();
    for stream in [&mut stream, &mut second] {
        let op = exec::wait_for_stage(stream, Stage::Completed).await;
        let response = exec::response(&op);
        assert_eq!(
            exec::status_code(&response),
            Code::Unavailable,
            "{response:?}"
        );
        let message = &response.status.as_ref().unwrap().message;
        assert!(message.contains("shut down"), "{message}");
        assert!(!response.cached_result);
    }
    joined(&mut server).await;
    exec::eventually("the action's processes to die", || {
        !process_alive(pid) && !process_alive(child)
    })
    .await;
    assert!(tmp_files(&server).is_empty(), "{:?}", tmp_files(&server));
    // A killed action is not cached.
    let server = TestServer::start_in(take_dir(server), |_| {}).await;
    let mut ac = server.action_cache().await;
    let cached = ac
        .get_action_result(rexd::proto::remote_execution::GetActionResultRequest {
            action_digest: Some(action.digest.clone()),
            ..Default::default()
        })
        .await;
    assert_eq!(cached.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_actions_fail_at_once_while_running_ones_finish() {
    let mut server = server(60, 1).await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let running = sh(format!("{}; echo running", wait_for_file(&go))).build();
    let queued = sh(format!("{}; echo queued", wait_for_file(&go))).build();
    running.upload(&server).await;
    queued.upload(&server).await;
    let mut running_stream = exec::start(&server, running.request()).await.unwrap();
    exec::wait_for_stage(&mut running_stream, Stage::Executing).await;
    let mut queued_stream = exec::start(&server, queued.request()).await.unwrap();
    assert_eq!(
        exec::stage(&exec::next_update(&mut queued_stream).await),
        Stage::Queued
    );

    server.begin_shutdown();
    // The queued action is failed without waiting for the running one.
    let op = exec::wait_for_stage(&mut queued_stream, Stage::Completed).await;
    let response = exec::response(&op);
    assert_eq!(
        exec::status_code(&response),
        Code::Unavailable,
        "{response:?}"
    );
    assert!(
        response
            .status
            .unwrap()
            .message
            .contains("before the action started"),
        "the message should say the action never ran"
    );

    std::fs::write(&go, "").unwrap();
    let op = exec::wait_for_stage(&mut running_stream, Stage::Completed).await;
    let response = exec::response(&op);
    assert_eq!(exec::status_code(&response), Code::Ok, "{response:?}");
    assert_eq!(response.result.unwrap().exit_code, 0);
    joined(&mut server).await;
    // The queued action never ran: nothing created its output.
    assert!(tmp_files(&server).is_empty(), "{:?}", tmp_files(&server));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_leaves_no_partial_blob() {
    let mut server = server(1, 1).await;
    let data = common::pseudo_random(3 * 1024 * 1024, 11);
    // An upload that sends half its bytes, then the client goes away: rexd keeps the
    // partial file so the client could resume.
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let resource_name = common::upload_path(&data);
    let mut bytestream = server.bytestream().await;
    let call = tokio::spawn(async move {
        bytestream
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(WriteRequest {
        resource_name: resource_name.clone(),
        write_offset: 0,
        finish_write: false,
        data: data[..data.len() / 2].to_vec().into(),
    })
    .await
    .unwrap();
    exec::eventually("the partial upload to reach the disk", || {
        tmp_files(&server).iter().any(|f| f.starts_with("upload-"))
    })
    .await;
    call.abort();
    drop(tx);

    server.begin_shutdown();
    joined(&mut server).await;
    // The partial upload dies with the ByteStream service, whose last request task may end
    // a moment after the server returns.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !tmp_files(&server).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partial blobs left behind: {:?}",
            tmp_files(&server)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_in_flight_at_shutdown_completes() {
    // A generous grace: the upload must not be cut off by it.
    let mut server = server(60, 1).await;
    let data = common::pseudo_random(2 * 1024 * 1024, 12);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let resource_name = common::upload_path(&data);
    let mut bytestream = server.bytestream().await;
    let call = tokio::spawn(async move {
        bytestream
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let half = data.len() / 2;
    tx.send(WriteRequest {
        resource_name: resource_name.clone(),
        write_offset: 0,
        finish_write: false,
        data: data[..half].to_vec().into(),
    })
    .await
    .unwrap();
    exec::eventually("the upload to start", || {
        tmp_files(&server).iter().any(|f| f.starts_with("upload-"))
    })
    .await;

    server.begin_shutdown();
    // The request in flight is let finish.
    tx.send(WriteRequest {
        resource_name: String::new(),
        write_offset: half as i64,
        finish_write: true,
        data: data[half..].to_vec().into(),
    })
    .await
    .unwrap();
    let committed = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the upload should finish")
        .unwrap()
        .expect("the upload in flight succeeds")
        .into_inner()
        .committed_size;
    assert_eq!(committed, data.len() as i64);
    joined(&mut server).await;
    assert!(tmp_files(&server).is_empty(), "{:?}", tmp_files(&server));
    assert!(common::blob_file(server.data_dir.path(), &data).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_does_not_keep_the_server_from_stopping() {
    // A client that opens an upload and then neither finishes nor goes away.
    let mut server = server(1, 1).await;
    let data = common::pseudo_random(2 * 1024 * 1024, 13);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteRequest>(4);
    let mut bytestream = server.bytestream().await;
    let call = tokio::spawn(async move {
        bytestream
            .write(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(WriteRequest {
        resource_name: common::upload_path(&data),
        write_offset: 0,
        finish_write: false,
        data: data[..1000].to_vec().into(),
    })
    .await
    .unwrap();
    exec::eventually("the upload to start", || {
        tmp_files(&server).iter().any(|f| f.starts_with("upload-"))
    })
    .await;
    server.begin_shutdown();
    // The server stops after its grace period even though the stream is still open.
    joined(&mut server).await;
    // Once the client gives up too, its partial upload is gone.
    drop(tx);
    let _ = tokio::time::timeout(PATIENCE, call).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !tmp_files(&server).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "partial blobs left behind: {:?}",
            tmp_files(&server)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
