//! End to end: two rexd frontends on one bucket of a real Garage, with real Bazel 4.2.3.
//! Bazel builds the fixture workspace with frontend A as its remote executor; after `bazel
//! clean` it builds against frontend B, whose disk is empty, and every action must be a
//! remote cache hit served from the bucket. Then frontend A itself restarts on an empty
//! disk and serves the same build from the bucket.
//!
//! Skipped loudly if Bazel or Garage is missing (fails instead when `CI` is set).

mod common;

use common::TestServer;
use common::bazel::{self, Workspace, bazel_with, remote_exec_flags};
use common::garage::Garage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frontends_on_one_bucket_share_a_bazel_build() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let remote = garage.remote_config("bazel");
    let config = remote.clone();
    let a = TestServer::start_with(move |c| c.storage.remote = Some(config)).await;
    let config = remote.clone();
    let b = TestServer::start_with(move |c| c.storage.remote = Some(config)).await;
    let (url_a, url_b) = (a.url(), b.url());

    let ws = tokio::task::spawn_blocking(move || {
        let ws = Workspace::new();
        let run = bazel_with(&ws, &["build", "//..."], &remote_exec_flags(&url_a));
        run.assert_success();
        let s = run.summary();
        assert!(s.remote() > 0, "nothing ran remotely: {s:?}");
        assert_eq!(
            s.remote(),
            s.non_internal(),
            "every action runs on A: {s:?}"
        );
        ws.assert_outputs();

        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        ws.assert_outputs_absent();
        let run = bazel_with(&ws, &["build", "//..."], &remote_exec_flags(&url_b));
        run.assert_all_remote_cache_hits();
        ws.assert_outputs();
        ws
    })
    .await
    .unwrap();
    assert!(
        b.ctx
            .store
            .remote()
            .unwrap()
            .sent(rexd::storage::remote::Op::Get)
            > 0,
        "B read from the bucket"
    );

    // A's machine is replaced: a new A on an empty disk still serves the whole build.
    drop(a.stop().await);
    let a = TestServer::start_with(move |c| c.storage.remote = Some(remote)).await;
    let url_a = a.url();
    tokio::task::spawn_blocking(move || {
        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        let run = bazel_with(&ws, &["build", "//..."], &remote_exec_flags(&url_a));
        run.assert_all_remote_cache_hits();
        ws.assert_outputs();
    })
    .await
    .unwrap();
}
