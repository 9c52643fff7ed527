//! `allow_ac_updates = false`: clients may not write the action cache of that instance
//! (UpdateActionResult is PERMISSION_DENIED and Capabilities says so), yet rexd's own workers
//! still fill it, so a second Execute of an action is a cache hit.

mod common;

use common::exec::{self, run_ok, sh};
use common::start_plain_isolated as start_plain;
use common::{TestServer, expect_status, upload_blobs};
use rexd::config::InstanceConfig;
use rexd::proto::remote_execution as re;
use tonic::Code;

/// "" locked (no client AC writes); "open" with the default policy.
async fn server() -> TestServer {
    start_plain(|c| {
        let mut locked = InstanceConfig::named("");
        locked.allow_ac_updates = false;
        c.instances = vec![locked, InstanceConfig::named("open")];
    })
    .await
}

async fn update(
    server: &TestServer,
    instance: &str,
    action: &re::Digest,
    result: re::ActionResult,
) -> Result<re::ActionResult, tonic::Status> {
    server
        .action_cache()
        .await
        .update_action_result(re::UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.clone()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(
    server: &TestServer,
    instance: &str,
    action: &re::Digest,
) -> Result<re::ActionResult, tonic::Status> {
    server
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn update_enabled(server: &TestServer, instance: &str) -> bool {
    server
        .capabilities()
        .await
        .get_capabilities(re::GetCapabilitiesRequest {
            instance_name: instance.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cache_capabilities
        .unwrap()
        .action_cache_update_capabilities
        .unwrap()
        .update_enabled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result_is_denied_on_a_locked_instance() {
    let server = server().await;
    let stdout = b"forged output".to_vec();
    upload_blobs(&server, &[&stdout]).await;
    let action = common::digest(b"an action nobody ran");
    let forged = re::ActionResult {
        exit_code: 0,
        stdout_digest: Some(common::digest(&stdout)),
        ..Default::default()
    };
    expect_status(
        update(&server, "", &action, forged.clone()).await,
        Code::PermissionDenied,
        &["UpdateActionResult"],
    );
    // Nothing was stored.
    expect_status(get(&server, "", &action).await, Code::NotFound, &[]);
    // The open instance takes the same result.
    update(&server, "open", &action, forged.clone())
        .await
        .expect("UpdateActionResult on an open instance");
    assert_eq!(
        get(&server, "open", &action).await.unwrap().stdout_digest,
        forged.stdout_digest
    );
    // ...which does not leak into the locked one.
    expect_status(get(&server, "", &action).await, Code::NotFound, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_report_the_policy() {
    let server = server().await;
    assert!(!update_enabled(&server, "").await);
    assert!(update_enabled(&server, "open").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_still_fill_a_locked_action_cache() {
    let server = server().await;
    let action = sh("echo built by rexd");
    let first = exec::run(&server, &action).await;
    assert_eq!(exec::status_code(&first), Code::Ok, "{first:?}");
    assert!(!first.cached_result, "the first run cannot be cached");
    let first_result = first.result.unwrap();
    assert_eq!(first_result.exit_code, 0);

    let prepared = action.build();
    let second = exec::execute(&server, prepared.request()).await;
    assert!(
        second.cached_result,
        "the second Execute should be an action-cache hit: {second:?}"
    );
    let second_result = second.result.unwrap();
    assert_eq!(second_result.stdout_digest, first_result.stdout_digest);
    assert_eq!(
        exec::read_text(&server, &second_result.stdout_digest).await,
        "built by rexd\n"
    );
    // GetActionResult serves it as well.
    let cached = get(&server, "", &prepared.digest).await.unwrap();
    assert_eq!(cached.stdout_digest, first_result.stdout_digest);

    // Overwriting the worker's result is still refused.
    expect_status(
        update(&server, "", &prepared.digest, re::ActionResult::default()).await,
        Code::PermissionDenied,
        &[],
    );
    let cached = get(&server, "", &prepared.digest).await.unwrap();
    assert_eq!(cached.stdout_digest, first_result.stdout_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fill_the_cache_of_the_instance_they_ran_for() {
    let server = server().await;
    let action = sh("echo on open");
    let prepared = action.build();
    prepared.upload(&server).await;
    let mut request = prepared.request();
    request.instance_name = "open".into();
    let first = exec::execute(&server, request.clone()).await;
    assert!(!first.cached_result);
    assert_eq!(first.result.as_ref().unwrap().exit_code, 0);
    let again = exec::execute(&server, request).await;
    assert!(again.cached_result, "{again:?}");
    // Results are per instance: the locked instance has not seen this action.
    expect_status(
        get(&server, "", &prepared.digest).await,
        Code::NotFound,
        &[],
    );
    let on_locked = exec::execute(&server, prepared.request()).await;
    assert!(!on_locked.cached_result, "{on_locked:?}");
    let _ = run_ok(&server, &action).await;
}
