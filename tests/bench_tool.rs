//! rexd-bench end to end: the built binary runs every workload at tiny sizes against an
//! in-process rexd and reports every figure in its `--json` output.

mod common;

use std::process::{Command, Output};

/// Every figure `--json` must report, in its flat `figures` object.
const FIGURES: &[&str] = &[
    "upload_mb_per_s",
    "download_mb_per_s",
    "batch_blobs_per_s",
    "find_missing_median_ms",
    "exec_noop_median_ms",
    "exec_noop_p95_ms",
    "exec_cached_median_ms",
    "exec_cached_p95_ms",
    "exec_throughput_actions_per_s",
    "stage_round_trip_ms",
    "stage_server_ms",
];

const WORKLOADS: &[&str] = &[
    "upload",
    "download",
    "batch",
    "find-missing",
    "exec-noop",
    "exec-cached",
    "exec-throughput",
    "stage",
];

/// Runs rexd-bench off the async runtime, so the in-process server keeps serving.
async fn bench(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rexd-bench"))
            .args(args)
            .output()
            .expect("starting rexd-bench")
    })
    .await
    .unwrap()
}

fn tiny_run(target: &str) -> Vec<String> {
    format!(
        "--target {target} --json --seed 7 --server-pid {pid} \
         --upload-size 1MiB --parallel 2 --batch-count 50 \
         --find-missing-count 20 --find-missing-calls 3 --warmup 1 \
         --exec-count 5 --cached-count 5 --throughput-count 10 --throughput-concurrency 4 \
         --stage-files 50 --stage-dirs 5 --stage-runs 2 all",
        pid = std::process::id()
    )
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// The flat `"figures":{...}` object of the report as (name, value) pairs.
fn figures(json: &str) -> Vec<(String, Option<f64>)> {
    let start = json.find("\"figures\":{").expect("a figures object") + "\"figures\":{".len();
    let body = &json[start..start + json[start..].find('}').expect("the end of figures")];
    body.split(',')
        .map(|pair| {
            let (name, value) = pair.split_once(':').expect("name:value");
            (name.trim_matches('"').to_string(), value.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_reports_its_figures() {
    let server = common::TestServer::start().await;
    let output = bench(tiny_run(&server.url())).await;
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "rexd-bench failed ({}):\n{stderr}\n{stdout}",
        output.status
    );

    // stdout is exactly one JSON object; progress and the summary went to stderr.
    let json = stdout.trim();
    assert!(
        json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
        "{json}"
    );
    let reported = figures(json);
    for name in FIGURES {
        let value = reported
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("figure {name} missing from {json}"))
            .1;
        assert!(
            value.is_some_and(|v| v > 0.0),
            "figure {name} should be a positive number: {value:?}"
        );
    }
    assert_eq!(
        json.matches("\"status\":\"ok\"").count(),
        WORKLOADS.len(),
        "{json}"
    );
    for fact in [
        "\"cores\":",
        "\"date\":\"",
        "\"rss_idle_mib\":",
        "\"server_rss_peak_mib\":",
    ] {
        assert!(json.contains(fact), "{fact} missing from {json}");
    }
    assert!(
        json.contains(&format!("\"target\":\"{}\"", server.url())),
        "{json}"
    );

    // The summary table has one line per workload.
    for workload in WORKLOADS {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{workload} "))),
            "no summary line for {workload}:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_failure() {
    // Bind and drop a listener to find a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = bench(vec![
        "--target".into(),
        format!("grpc://127.0.0.1:{port}"),
        "batch".into(),
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connecting to grpc://127.0.0.1"),
        "{stderr}"
    );
}
