//! google.longrunning.Operations against a real in-process rexd: listing (per instance,
//! paged), get, delete, wait, and NOT_FOUND for names the server does not know.

mod common;

use common::exec::*;
use common::{TestServer, expect_status};
use rexd::config::InstanceConfig;
use rexd::proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest,
};
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use tonic::Code;

const UNKNOWN: &str = "operations/00000000-0000-0000-0000-000000000000";

/// Runs `script` to completion; returns the final update.
async fn finished_operation(server: &TestServer, script: &str) -> Operation {
    let prepared = sh(script).build();
    prepared.upload(server).await;
    let updates = collect(start(server, prepared.request()).await.unwrap()).await;
    updates.last().unwrap().clone()
}

async fn list_page(
    server: &TestServer,
    name: &str,
    page_size: i32,
    page_token: &str,
) -> (Vec<String>, String) {
    let response = operations_client(server)
        .await
        .list_operations(ListOperationsRequest {
            name: name.into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names = response.operations.into_iter().map(|op| op.name).collect();
    (names, response.next_page_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_operations_pages_through_every_operation() {
    let server = start_plain(|_| {}).await;
    let mut wanted = Vec::new();
    for n in 0..3 {
        wanted.push(finished_operation(&server, &format!("echo {n}")).await.name);
    }
    wanted.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let (names, next) = list_page(&server, "operations", 1, &token).await;
        assert_eq!(names.len(), 1, "page_size is respected");
        seen.extend(names);
        if next.is_empty() {
            break;
        }
        token = next;
    }
    seen.sort();
    assert_eq!(seen, wanted);
    let (all, next) = list_page(&server, "operations", 0, "").await;
    assert_eq!(all.len(), 3);
    assert!(next.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_named_and_listed_per_instance() {
    let server = start_plain(|cfg| cfg.instances.push(InstanceConfig::named("ci"))).await;
    let prepared = sh("echo ci").build();
    prepared.upload(&server).await;
    let mut request = prepared.request();
    request.instance_name = "ci".into();
    let updates = collect(start(&server, request).await.unwrap()).await;
    let name = &updates.last().unwrap().name;
    assert!(name.starts_with("ci/operations/"), "{name}");
    let (names, _) = list_page(&server, "ci/operations", 0, "").await;
    assert_eq!(names, std::slice::from_ref(name));
    let (names, _) = list_page(&server, "operations", 0, "").await;
    assert!(
        names.is_empty(),
        "the default instance has no operations: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_operation_returns_the_final_state() {
    let server = start_plain(|_| {}).await;
    let finished = finished_operation(&server, "echo got").await;
    let got = operations_client(&server)
        .await
        .get_operation(GetOperationRequest {
            name: finished.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.done);
    assert_eq!(stage(&got), Stage::Completed);
    assert_eq!(response(&got), response(&finished));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_operation_forgets_it() {
    let server = start_plain(|_| {}).await;
    let finished = finished_operation(&server, "echo deleted").await;
    let mut ops = operations_client(&server).await;
    ops.delete_operation(DeleteOperationRequest {
        name: finished.name.clone(),
    })
    .await
    .unwrap();
    expect_status(
        ops.get_operation(GetOperationRequest {
            name: finished.name.clone(),
        })
        .await,
        Code::NotFound,
        &[&finished.name],
    );
    let (names, _) = list_page(&server, "operations", 0, "").await;
    assert!(names.is_empty(), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_operation_on_a_finished_operation_returns_it() {
    let server = start_plain(|_| {}).await;
    let finished = finished_operation(&server, "echo waited").await;
    let waited = operations_client(&server)
        .await
        .wait_operation(WaitOperationRequest {
            name: finished.name.clone(),
            timeout: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(waited.done);
    assert_eq!(response(&waited), response(&finished));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_operation_names_are_not_found() {
    let server = start_plain(|_| {}).await;
    let mut ops = operations_client(&server).await;
    let name = || UNKNOWN.to_string();
    expect_status(
        ops.get_operation(GetOperationRequest { name: name() })
            .await,
        Code::NotFound,
        &[UNKNOWN],
    );
    expect_status(
        ops.delete_operation(DeleteOperationRequest { name: name() })
            .await,
        Code::NotFound,
        &[UNKNOWN],
    );
    expect_status(
        ops.cancel_operation(CancelOperationRequest { name: name() })
            .await,
        Code::NotFound,
        &[UNKNOWN],
    );
    expect_status(
        ops.wait_operation(WaitOperationRequest {
            name: name(),
            timeout: None,
        })
        .await,
        Code::NotFound,
        &[UNKNOWN],
    );
}
