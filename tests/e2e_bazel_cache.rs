//! End to end: real Bazel 4.2.3 (Debian `bazel-bootstrap`) uses rexd as a
//! remote cache (`--remote_cache`). Actions run locally and are uploaded;
//! after `bazel clean` every action must come back as a `remote cache hit`.
//!
//! Skipped loudly if /usr/bin/bazel is missing (fails instead when `CI` is
//! set). Fully offline: the fixture workspace binds local stand-ins for the
//! repositories Bazel would otherwise download.

mod common;

use common::TestServer;
use common::bazel::{self, Workspace, bazel_with, remote_cache_flags};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_remote_cache_roundtrip() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let server = TestServer::start().await;
    let url = server.url();

    // Bazel is a blocking child process; keep it off the runtime threads that
    // serve rexd.
    tokio::task::spawn_blocking(move || {
        let ws = Workspace::new();
        // OFFLINE_FLAGS (added by bazel_with): plain output, no sandbox
        // debug spam, fixed action env so action keys are stable, no
        // downloads. remote_cache_flags: --remote_cache=<rexd>, upload local
        // results, accept cached results, retry once.
        let flags = remote_cache_flags(&url);

        // 1. Cold build: the server is empty, so everything runs locally and
        //    is uploaded to rexd.
        let run = bazel_with(&ws, &["build", "//..."], &flags);
        run.assert_success();
        let s = run.summary();
        assert!(s.non_internal() > 0, "nothing was executed: {s:?}");
        assert_eq!(
            s.remote_cache_hit(),
            0,
            "fresh server cannot have hits: {s:?}"
        );
        assert_eq!(
            s.local(),
            s.non_internal(),
            "expected only local processes: {s:?}"
        );
        ws.assert_outputs();

        // 2. `bazel clean` (not --expunge: keeps the server and the fetched
        //    repositories, so action keys stay identical) drops all outputs
        //    and Bazel's local action cache.
        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        ws.assert_outputs_absent();

        // 3. Rebuild: every non-internal process must be served by rexd.
        bazel_with(&ws, &["build", "//..."], &flags).assert_all_remote_cache_hits();
        // Outputs (incl. the executable cc_binary) came back from the CAS.
        ws.assert_outputs();

        // 4. `bazel test`: the test runs locally (only the test action is
        //    new) and its result is uploaded.
        let run = bazel_with(&ws, &["test", "//..."], &flags);
        run.assert_success();
        assert!(run.output.contains("//test:outputs_test"), "{}", run.output);
        assert!(run.output.contains("PASSED"), "{}", run.output);

        // 5. After another clean, the test result itself is a cache hit.
        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        let run = bazel_with(&ws, &["test", "//..."], &flags);
        run.assert_success();
        assert!(run.output.contains("PASSED"), "{}", run.output);
        let s = run.summary();
        assert!(s.remote_cache_hit() > 0, "no remote cache hits: {s:?}");
        assert_eq!(
            s.remote_cache_hit(),
            s.non_internal(),
            "every non-internal process must be a remote cache hit: {s:?}\n{}",
            run.output
        );
        ws.assert_outputs();
        // Dropping `ws` expunges its output base and stops its Bazel server.
    })
    .await
    .expect("bazel test body panicked");

    drop(server);
}
