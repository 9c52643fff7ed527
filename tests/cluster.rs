//! Cluster mode across hosts: a rexd server on one network namespace, `rexd worker`s on
//! others, each with its own data directory, joined by veth links. Real Bazel builds
//! through the workers, before and after a server restart, and the faults a cluster meets
//! (a link cut, a worker coming back after its session expired) are checked with probes.
//!
//! Needs root and iproute2: skipped loudly without them, and failing when `CI` is set.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use common::bazel::{self, Workspace, bazel_with, remote_exec_flags};
use common::bots::WorkerProcess;
use common::exec::{self, sh};
use common::netns::{Hosts, SERVER_PORT};
use rexd::proto::longrunning::{ListOperationsRequest, operations_client::OperationsClient};
use rexd::proto::remote_execution as re;

/// The workers named in the finished operations the server still holds.
async fn workers_that_ran(server: &TestServer) -> BTreeSet<String> {
    let mut client = OperationsClient::new(server.channel().await);
    let mut workers = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_operations(ListOperationsRequest {
                name: "operations".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for op in &page.operations {
            if let Some(result) = exec::response(op).result
                && let Some(metadata) = result.execution_metadata
            {
                workers.insert(metadata.worker);
            }
        }
        if page.next_page_token.is_empty() {
            return workers;
        }
        page_token = page.next_page_token;
    }
}

fn scheduler_only(c: &mut rexd::Config) {
    c.execution.local_workers = Some(0);
    c.execution.bot_session_timeout_secs = 3;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_builds_on_workers_on_other_hosts_and_they_outlive_a_server_restart() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let Some(hosts) = Hosts::create(3) else {
        return;
    };
    let server =
        TestServer::start_on_host(&hosts, tempfile::tempdir().unwrap(), scheduler_only).await;
    let _workers: Vec<_> = (0..3)
        .map(|i| WorkerProcess::start_on_host(&hosts, i, &format!("host-{i}"), 2))
        .collect();
    let url = format!("grpc://127.0.0.1:{SERVER_PORT}");
    let ns = hosts.server.clone();
    let flags = remote_exec_flags(&url);
    let (ws, built) = tokio::task::spawn_blocking(move || {
        let mut ws = Workspace::new();
        ws.netns = Some(ns);
        let run = bazel_with(&ws, &["build", "//..."], &flags);
        run.assert_success();
        ws.assert_outputs();
        let summary = run.summary();
        (ws, summary)
    })
    .await
    .unwrap();
    assert!(built.remote() > 0, "nothing ran remotely: {built:?}");
    assert_eq!(built.local(), 0, "processes ran locally: {built:?}");
    let ran_on = workers_that_ran(&server).await;
    assert!(
        ran_on.len() >= 2 && ran_on.iter().all(|w| w.starts_with("host-")),
        "the actions should spread over the workers: {ran_on:?}"
    );

    // The server restarts on the same data directory; the workers find it again.
    let data_dir = server.stop().await;
    let server = TestServer::start_on_host(&hosts, data_dir, scheduler_only).await;
    let result = exec::run_ok(&server, &sh("echo after the restart")).await;
    let worker = result.execution_metadata.unwrap().worker;
    assert!(worker.starts_with("host-"), "ran on {worker:?}");

    // And the next build works: from clean, with the action cache refused, so every
    // action runs again on the workers.
    let mut flags = remote_exec_flags(&format!("grpc://127.0.0.1:{SERVER_PORT}"));
    flags.push("--noremote_accept_cached".into());
    let rebuilt = tokio::task::spawn_blocking(move || {
        bazel_with(&ws, &["clean"], &[]).assert_success();
        let run = bazel_with(&ws, &["build", "//..."], &flags);
        run.assert_success();
        ws.assert_outputs();
        run.summary()
    })
    .await
    .unwrap();
    assert_eq!(
        rebuilt.remote(),
        built.remote(),
        "every action ran remotely again after the restart: {rebuilt:?}"
    );
    assert_eq!(rebuilt.local(), 0, "processes ran locally: {rebuilt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_the_leases_and_the_late_result_is_ignored() {
    let Some(hosts) = Hosts::create(2) else {
        return;
    };
    let server = TestServer::start_on_host(&hosts, tempfile::tempdir().unwrap(), |c| {
        c.execution.local_workers = Some(0);
        c.execution.bot_session_timeout_secs = 2;
    })
    .await;
    let signals = exec::outside_dir();
    let started = exec::shared_file(&signals, "started");
    let go = signals.path().join("go");
    let prepared = sh(format!(
        "echo x >> '{}'; {}; echo done",
        started.display(),
        exec::wait_for_file(&go)
    ))
    .build();
    prepared.upload(&server).await;
    let cut_off = WorkerProcess::start_on_host(&hosts, 0, "cut-off", 1);
    let stream = exec::start(&server, prepared.request()).await.unwrap();
    exec::eventually("the action started on the first host", || {
        exec::lines(&started).len() == 1
    })
    .await;
    hosts.set_link(0, false);
    let _other = WorkerProcess::start_on_host(&hosts, 1, "other", 1);
    // The first host's session expires; its lease runs again on the second.
    exec::eventually("the action started again elsewhere", || {
        exec::lines(&started).len() == 2
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let updates = exec::collect(stream).await;
    let result = exec::response(updates.last().unwrap()).result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.execution_metadata.unwrap().worker, "other");

    // The first host comes back: the server has forgotten its session, so its result of
    // the same run is refused and the cached result stays the one "other" wrote.
    hosts.set_link(0, true);
    exec::eventually("the cut-off worker opened a new session", || {
        cut_off.log().contains("opening a new one")
    })
    .await;
    let cached = server
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(prepared.digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.execution_metadata.unwrap().worker, "other");
}
