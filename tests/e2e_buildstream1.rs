//! End to end: real BuildStream 1.6 (Debian `buildstream`, /usr/bin/bst) uses rexd as its
//! artifact cache. It builds a tiny project locally (bubblewrap), pushes the artifacts
//! (content through the CAS, names through Remote Asset PushDirectory), then, with an empty
//! local cache, pulls them back (Remote Asset FetchDirectory) and checks one out; the
//! checkout must equal the one from the original build.
//!
//! Skipped loudly if BuildStream 1.6 or busybox-static is missing (fails instead when `CI`
//! is set).

mod common;

use common::TestServer;
use common::bst1::{self, ARTIFACT_URN_PREFIX, Project1, tree_listing};
use rexd::storage::asset_store::AssetKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildstream1_artifacts_round_trip_through_remote_asset() {
    if !bst1::bst1_or_skip() {
        return;
    }
    let server = TestServer::start().await;
    // BuildStream 1.6 speaks gRPC to http:// URLs (https:// means TLS).
    let url = format!("http://{}", server.addr);
    let store = server.ctx.asset.store().clone();

    // bst is a blocking child process; keep it off the runtime threads serving rexd.
    tokio::task::spawn_blocking(move || {
        let mut project = Project1::new(&url);

        // 1. Cold build: nothing to pull (a miss is NOT_FOUND, which bst reads as "not
        //    cached"), both elements build locally and are pushed.
        let run = project.bst(&["build", "hello.bst"]);
        run.assert_success();
        assert_eq!(run.count("Pushed artifact"), 2, "both artifacts pushed");
        let artifacts: Vec<_> = store
            .keys()
            .into_iter()
            .filter(|k| k.uri.starts_with(ARTIFACT_URN_PREFIX))
            .collect();
        // bst 1.6 names an artifact by its strong and its weak cache key (the same for an
        // element without dependencies): at least one reference per element.
        assert!(artifacts.iter().all(|k| k.kind == AssetKind::Directory));
        for element in ["/sysroot/", "/hello/"] {
            assert!(
                artifacts.iter().any(|k| k.uri.contains(element)),
                "no reference for {element}: {artifacts:?}"
            );
        }
        let built = project.scratch("built");
        project
            .bst(&["checkout", "hello.bst", built.to_str().unwrap()])
            .assert_success();

        // 2. Pushing again finds every artifact on the server (FetchDirectory hit).
        let run = project.bst(&["push", "--deps", "all", "hello.bst"]);
        run.assert_success();
        assert_eq!(run.count("Pushed artifact"), 0, "already on the server");

        // 3. Empty local cache: pull everything back and check it out.
        project.fresh_cache();
        let run = project.bst(&["pull", "--deps", "all", "hello.bst"]);
        run.assert_success();
        assert_eq!(run.count("Pulled artifact"), 2, "both artifacts pulled");
        let pulled = project.scratch("pulled");
        project
            .bst(&["checkout", "hello.bst", pulled.to_str().unwrap()])
            .assert_success();

        let expected = tree_listing(&built);
        assert!(
            expected.contains(&(
                "share/hello.txt".into(),
                "hello from BuildStream 1.6 via rexd\n".into()
            )),
            "{expected:?}"
        );
        assert_eq!(
            tree_listing(&pulled),
            expected,
            "pulled checkout = built checkout"
        );

        // 4. A build on an empty cache now pulls hello.bst (its build dependency is not
        //    needed) instead of building anything.
        project.fresh_cache();
        let run = project.bst(&["build", "hello.bst"]);
        run.assert_success();
        assert_eq!(run.count("Pulled artifact"), 1, "{}", run.output);
        assert!(
            run.output.contains("Build Queue: processed 0"),
            "nothing rebuilt:\n{}",
            run.output
        );
    })
    .await
    .unwrap();
}
