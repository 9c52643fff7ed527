//! End to end: real Bazel 4.2.3 (Debian `bazel-bootstrap`) builds and tests
//! the fixture workspace with rexd as its remote executor. Nothing may run
//! locally (`--spawn_strategy=remote`, `--remote_local_fallback=false`); after
//! `bazel clean` every action must come back as a `remote cache hit`.
//!
//! Skipped loudly if /usr/bin/bazel is missing (fails instead when `CI` is
//! set). Fully offline.

mod common;

use common::TestServer;
use common::bazel::{self, Workspace, bazel_with, remote_exec_flags};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_remote_execution() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let server = TestServer::start().await;
    let url = server.url();

    tokio::task::spawn_blocking(move || {
        let ws = Workspace::new();
        // OFFLINE_FLAGS (added by bazel_with) + remote_exec_flags:
        // --remote_executor=<rexd> (also the cache), --spawn_strategy=remote
        // (every spawn incl. genrules and the test runner must go remote),
        // --remote_local_fallback=false (a remote failure fails the build),
        // --remote_download_outputs=all (so the outputs can be checked).
        let flags = remote_exec_flags(&url);

        // 1. Cold build: compiles, links, the genrules and the genrule that
        //    runs the freshly built cc_binary all execute on rexd.
        let run = bazel_with(&ws, &["build", "//..."], &flags);
        run.assert_success();
        let s = run.summary();
        assert!(s.remote() > 0, "nothing ran remotely: {s:?}");
        assert_eq!(s.local(), 0, "processes ran locally: {s:?}");
        assert_eq!(
            s.remote_cache_hit(),
            0,
            "fresh server cannot have hits: {s:?}"
        );
        assert_eq!(
            s.remote(),
            s.non_internal(),
            "every non-internal process must be remote: {s:?}"
        );
        // Includes gen/table.txt, produced by running //cc:mktable remotely,
        // and the cc_binary itself (checks the executable bit survived).
        ws.assert_outputs();

        // 2. The sh_test runs remotely too.
        let run = bazel_with(&ws, &["test", "//..."], &flags);
        run.assert_success();
        assert!(run.output.contains("//test:outputs_test"), "{}", run.output);
        assert!(run.output.contains("PASSED"), "{}", run.output);
        let s = run.summary();
        assert!(s.remote() > 0, "the test did not run remotely: {s:?}");
        assert_eq!(s.local(), 0, "processes ran locally: {s:?}");

        // 3. clean + rebuild: all results come from rexd's action cache.
        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        ws.assert_outputs_absent();
        let run = bazel_with(&ws, &["build", "//..."], &flags);
        run.assert_success();
        let s = run.summary();
        assert!(s.remote_cache_hit() > 0, "no remote cache hits: {s:?}");
        assert_eq!(
            s.remote_cache_hit(),
            s.non_internal(),
            "every non-internal process must be a remote cache hit: {s:?}\n{}",
            run.output
        );
        ws.assert_outputs();

        // 4. clean + test: the test result is a cache hit as well.
        bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
        let run = bazel_with(&ws, &["test", "//..."], &flags);
        run.assert_success();
        assert!(run.output.contains("PASSED"), "{}", run.output);
        let s = run.summary();
        assert_eq!(
            s.remote_cache_hit(),
            s.non_internal(),
            "every non-internal process must be a remote cache hit: {s:?}\n{}",
            run.output
        );
    })
    .await
    .expect("bazel test body panicked");

    drop(server);
}
