//! End to end: real Bazel 4.2.3 (Debian `bazel-bootstrap`) fetches an `http_file` through
//! rexd's Remote Asset API (`--experimental_remote_downloader`): rexd downloads it from a
//! loopback origin the test runs, checks Bazel's `checksum.sri`, and keeps a reference, so a
//! second build in a fresh output base gets the file from rexd without touching the origin.
//!
//! Bazel 4.2.3 refuses the remote downloader without a gRPC cache ("The remote downloader
//! can only be used in combination with gRPC caching"), so `--remote_cache` points at rexd
//! too. `--repository_cache=` (empty) turns off Bazel's own download cache, which would
//! otherwise answer the second build by the file's sha256 without asking anyone.
//!
//! Skipped loudly if /usr/bin/bazel is missing (fails instead when `CI` is set).

mod common;

use std::fs;
use std::sync::Arc;

use common::TestServer;
use common::bazel::{self, Workspace};
use common::origin::Origin;
use sha2::Digest as _;

/// The origin path the `http_file` downloads.
const PAYLOAD_PATH: &str = "/dist/payload.txt";
const PAYLOAD: &[u8] = b"payload from the test's origin, fetched by rexd\n";

/// A copy of the Bazel fixture workspace plus an `http_file` named `payload` pointing at
/// `url`, and a genrule `//dl:copy` that copies it into `bazel-bin/dl/copied.txt`.
fn downloader_workspace(url: &str, sha256: &str) -> Workspace {
    let ws = Workspace::new();
    let workspace_file = ws.path().join("WORKSPACE");
    let mut text = fs::read_to_string(&workspace_file).unwrap();
    text.push_str(&format!(
        r#"
load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_file")

http_file(
    name = "payload",
    urls = ["{url}"],
    sha256 = "{sha256}",
    downloaded_file_path = "payload.txt",
)
"#
    ));
    fs::write(&workspace_file, text).unwrap();
    fs::create_dir(ws.path().join("dl")).unwrap();
    fs::write(
        ws.path().join("dl/BUILD"),
        r#"genrule(
    name = "copy",
    srcs = ["@payload//file"],
    outs = ["copied.txt"],
    cmd = "cp $< $@",
)
"#,
    )
    .unwrap();
    ws
}

/// Build flags: plain output, rexd as downloader (and, as 4.2.3 requires, as remote cache),
/// no repository cache.
fn downloader_flags(rexd: &str) -> Vec<String> {
    [
        "--color=no",
        "--curses=no",
        "--nosandbox_debug",
        "--incompatible_strict_action_env",
        "--verbose_failures",
        "--repository_cache=",
        "--remote_retries=1",
        "--remote_timeout=60s",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--remote_cache={rexd}"),
        format!("--experimental_remote_downloader={rexd}"),
    ])
    .collect()
}

fn build(ws: &Workspace, flags: &[String]) -> bazel::BazelRun {
    let mut args: Vec<&str> = vec!["build"];
    args.extend(flags.iter().map(String::as_str));
    args.push("//dl:copy");
    bazel::bazel(ws, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_fetches_http_file_through_rexd() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let origin = Arc::new(Origin::start().await);
    origin.serve(PAYLOAD_PATH, PAYLOAD);
    let server = TestServer::start_with(|c| {
        c.asset.allow_downloads = true;
        c.asset.allowed_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let rexd = server.url();
    let store = server.ctx.asset.store().clone();
    let file_url = origin.url(PAYLOAD_PATH);
    let sha256 = hex::encode(sha2::Sha256::digest(PAYLOAD));

    // Bazel is a blocking child process; keep it off the runtime threads serving rexd.
    let origin2 = origin.clone();
    tokio::task::spawn_blocking(move || {
        let origin = origin2;
        let flags = downloader_flags(&rexd);

        // 1. Cold: Bazel asks rexd (FetchBlob), which downloads from the origin.
        let ws = downloader_workspace(&file_url, &sha256);
        build(&ws, &flags).assert_success();
        assert_eq!(ws.read_output("dl/copied.txt").unwrap().as_bytes(), PAYLOAD);
        let hits = origin.hits();
        assert_eq!(hits.len(), 1, "one download: {hits:?}");
        assert!(
            hits[0].user_agent.starts_with("rexd/"),
            "rexd downloaded it, not Bazel: {hits:?}"
        );
        // rexd keeps the reference under Bazel's checksum qualifier.
        let keys: Vec<_> = store
            .keys()
            .into_iter()
            .filter(|k| k.uri == file_url)
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(
            keys[0]
                .qualifiers
                .iter()
                .any(|(n, v)| n == "checksum.sri" && v.starts_with("sha256-")),
            "{keys:?}"
        );
        drop(ws);

        // 2. A fresh workspace (its own output base, nothing fetched yet) sharing the output
        //    root: the file comes from rexd's reference; the origin sees nothing new.
        let ws = downloader_workspace(&file_url, &sha256);
        build(&ws, &flags).assert_success();
        assert_eq!(ws.read_output("dl/copied.txt").unwrap().as_bytes(), PAYLOAD);
        assert_eq!(origin.hits().len(), 1, "no second download");
    })
    .await
    .unwrap();
}
