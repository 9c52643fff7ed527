//! `rexd action show | rerun | diff` against a real in-process server, run as the real
//! binary over gRPC, as a developer would from a laptop.

mod common;

use common::TestServer;
use common::exec::{self, ActionBuilder, sh};

/// Runs `rexd action ARGS --server ...`: exit code and stdout.
async fn rexd_action(server: &TestServer, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rexd"))
        .arg("action")
        .args(args)
        .args(["--server", &server.url()])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("rexd action {args:?}: {stdout}{stderr}");
    (output.status.code().unwrap_or(-1), stdout)
}

fn named(a: &ActionBuilder) -> String {
    let d = a.build().digest;
    format!("{}/{}", d.hash, d.size_bytes)
}

async fn server() -> TestServer {
    exec::start_plain(|_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_the_action_and_its_result() {
    let server = server().await;
    let mut action = sh("echo shown > out.txt").file("dir/in.txt", b"input");
    action.env.push(("MODE".into(), "fast".into()));
    action.output_files = vec!["out.txt".into()];
    exec::run_ok(&server, &action).await;
    let (code, text) = rexd_action(&server, &["show", &named(&action)]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains("arguments: /bin/sh -c echo shown > out.txt"),
        "{text}"
    );
    assert!(text.contains("env MODE=fast"));
    assert!(text.contains("dir/in.txt"));
    assert!(text.contains("cached result: exit 0"));
    assert!(text.contains("output out.txt"));

    let (code, json) = rexd_action(&server, &["show", &named(&action), "--json"]).await;
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["environment"]["MODE"], "fast");
    assert_eq!(value["cached_result"]["exit_code"], 0);
    assert_eq!(value["inputs"][0]["path"], "dir/in.txt");

    // Its own lookups are not recorded as the build's cache hits.
    let hits = server.ctx.history.totals().cache_hits;
    let record = server.ctx.history.latest(
        &rexd::digest::Digest::parse(
            rexd::digest::DigestFunction::Sha256,
            &action.build().digest.hash,
            action.build().digest.size_bytes,
        )
        .unwrap(),
    );
    assert_eq!(hits, 0, "show and --json looked the result up twice");
    assert_eq!(
        record.unwrap().outcome.kind(),
        rexd::history::OutcomeKind::Success
    );
    let (code, _) = rexd_action(&server, &["show", &format!("{}/5", "a".repeat(64))]).await;
    assert_eq!(code, 3, "an action the server lacks is an error");
    let (code, _) = rexd_action(&server, &["show", "not-a-digest"]).await;
    assert_eq!(code, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_of_a_fixed_output_reproduces() {
    let server = server().await;
    let mut action = sh("mkdir -p gen && cat in.txt > gen/copy && echo fixed > out.txt")
        .file("in.txt", b"same every time");
    action.output_files = vec!["out.txt".into()];
    action.output_directories = vec!["gen".into()];
    exec::run_ok(&server, &action).await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let (code, text) = rexd_action(
        &server,
        &[
            "rerun",
            &named(&action),
            "--dir",
            run_dir,
            "--sandbox",
            "none",
        ],
    )
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("same: out.txt"), "{text}");
    assert!(
        text.contains("same: gen/copy"),
        "output directories are compared file by file"
    );
    assert!(text.trim_end().ends_with("reproduced"));
    // The same in the worker's usual sandbox (bubblewrap, Bazel's view of the host).
    let (code, text) = rexd_action(&server, &["rerun", &named(&action), "--sandbox", "host"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.trim_end().ends_with("reproduced"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_of_a_random_output_names_what_differs() {
    let server = server().await;
    let mut action = sh("echo stable > stable.txt; od -An -N16 -tx1 /dev/urandom > random.txt");
    action.output_files = vec!["stable.txt".into(), "random.txt".into()];
    exec::run_ok(&server, &action).await;
    let (code, text) = rexd_action(&server, &["rerun", &named(&action), "--sandbox", "none"]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("differs: random.txt"), "{text}");
    assert!(text.contains("same: stable.txt"));
    assert!(text.contains("NOT reproduced: 1 difference"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_the_variable_and_the_file() {
    let server = server().await;
    let build = |mode: &str, input: &[u8]| {
        let mut a = sh("cat src/input.txt > out.txt")
            .file("src/input.txt", input)
            .file("src/same.txt", b"x");
        a.env.push(("MODE".into(), mode.into()));
        a.output_files = vec!["out.txt".into()];
        a
    };
    let (first, second) = (build("fast", b"one"), build("slow", b"two"));
    first.build().upload(&server).await;
    second.build().upload(&server).await;
    let (code, text) = rexd_action(&server, &["diff", &named(&first), &named(&second)]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("env MODE: fast -> slow"), "{text}");
    assert!(text.contains("input changed src/input.txt"), "{text}");
    assert!(!text.contains("src/same.txt"));
    assert_eq!(text.lines().count(), 2, "nothing else differs: {text}");
    let (code, json) = rexd_action(
        &server,
        &["diff", &named(&first), &named(&second), "--json"],
    )
    .await;
    assert_eq!(code, 1);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["environment"][0]["name"], "MODE");
    let (code, text) = rexd_action(&server, &["diff", &named(&first), &named(&first)]).await;
    assert_eq!((code, text.as_str()), (0, "no difference\n"));
}
