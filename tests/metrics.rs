//! Prometheus metrics and `/healthz` on their own plain-HTTP port.
//!
//! Metrics are process-global (every server of this test binary records into one registry),
//! so counters are checked to increase, never for absolute values. The gauges that are copied
//! from a server when it is scraped (CAS and queue figures) are read from the one server being
//! scraped; only one test of this binary scrapes `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::exec::{self, PATIENCE, outside_dir, sh, wait_for_file};
use common::start_plain_isolated as start_plain;
use common::{TestServer, upload_blobs};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port nobody listens on right now. rexd does not report the address its metrics
/// listener bound, so the test picks the port itself.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A plain-processes server with `workers` workers and metrics on a free port.
async fn metrics_server(workers: usize) -> (TestServer, SocketAddr) {
    let addr = free_port();
    let server = start_plain(|c| {
        c.metrics.listen = Some(addr);
        c.execution.local_workers = Some(workers);
    })
    .await;
    // The metrics listener is bound inside the server task: wait until it answers.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok((200, _, _)) = http_get(addr, "/healthz").await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics listener on {addr} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, addr)
}

/// A hand-made HTTP/1.1 GET: status, content type and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(PATIENCE, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP GET timed out"))??;
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

/// The exposition text of `/metrics`.
async fn scrape(addr: SocketAddr) -> Metrics {
    let (status, content_type, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    Metrics(body)
}

/// Parsed Prometheus text.
struct Metrics(String);

impl Metrics {
    /// The sum of the samples of `name` whose labels include every one of `labels`; `None`
    /// when there is no such sample.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let wanted = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|l| l == format!("{k}=\"{v}\""))
            });
            if wanted {
                let value: f64 = value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad sample {line:?}"));
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// Like [`Metrics::get`], 0 when absent (a counter not yet incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    #[track_caller]
    fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in:\n{}", self.0))
    }
}

/// Scrapes until `check` holds for the figures, failing after [`PATIENCE`].
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let m = scrape(addr).await;
        if check(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            m.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const FIND_MISSING: &str =
    "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs";
const EXECUTE: &str = "/build.bazel.remote.execution.v2.Execution/Execute";

async fn find_missing(
    server: &TestServer,
    digests: Vec<re::Digest>,
) -> Result<usize, tonic::Status> {
    server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: digests,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().missing_blob_digests.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_exist_and_move_after_requests() {
    let (server, addr) = metrics_server(1).await;
    let before = scrape(addr).await;
    // Present from the first scrape on.
    for name in [
        "rexd_cas_blobs",
        "rexd_cas_disk_bytes",
        "rexd_cas_hits_total",
        "rexd_cas_misses_total",
        "rexd_cas_bytes_in_total",
        "rexd_cas_bytes_out_total",
        "rexd_actions_queued",
        "rexd_actions_running",
        "rexd_workers",
        "rexd_worker_utilisation",
    ] {
        before.expect(name, &[]);
    }
    assert_eq!(before.expect("rexd_workers", &[]), 1.0);
    assert_eq!(before.expect("rexd_actions_running", &[]), 0.0);
    assert_eq!(before.expect("rexd_actions_queued", &[]), 0.0);

    // RPC counts and latencies, by method and code.
    let ok = [("method", FIND_MISSING), ("code", "Ok")];
    let invalid = [("method", FIND_MISSING), ("code", "InvalidArgument")];
    let count = [("method", FIND_MISSING)];
    let blob = common::pseudo_random(4000, 7);
    let absent = common::pseudo_random(10, 8);
    assert_eq!(
        find_missing(&server, vec![common::digest(&absent)])
            .await
            .unwrap(),
        1
    );
    let bad = re::Digest {
        hash: "not-a-hash".into(),
        size_bytes: 1,
    };
    let err = find_missing(&server, vec![bad]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let after = scrape(addr).await;
    assert!(
        after.expect("rexd_rpc_requests_total", &ok) > before.value("rexd_rpc_requests_total", &ok)
    );
    assert!(
        after.expect("rexd_rpc_requests_total", &invalid)
            > before.value("rexd_rpc_requests_total", &invalid),
        "errors are counted under their code"
    );
    assert!(
        after.expect("rexd_rpc_duration_seconds_count", &count)
            >= before.value("rexd_rpc_duration_seconds_count", &count) + 2.0
    );
    after.expect("rexd_rpc_duration_seconds_sum", &count);
    after.expect(
        "rexd_rpc_duration_seconds_bucket",
        &[("method", FIND_MISSING), ("le", "+Inf")],
    );
    assert!(
        after.expect("rexd_cas_misses_total", &[]) > before.value("rexd_cas_misses_total", &[])
    );

    // Bytes in, blobs and disk use, hits and bytes out.
    upload_blobs(&server, &[&blob]).await;
    assert_eq!(
        find_missing(&server, vec![common::digest(&blob)])
            .await
            .unwrap(),
        0
    );
    let _ = exec::read_blob(&server, &common::digest(&blob)).await;
    let stored = scrape(addr).await;
    for (name, at_least) in [
        ("rexd_cas_bytes_in_total", 4000.0),
        ("rexd_cas_disk_bytes", 4000.0),
        ("rexd_cas_blobs", 1.0),
        ("rexd_cas_hits_total", 1.0),
    ] {
        assert!(
            stored.expect(name, &[]) >= after.value(name, &[]) + at_least,
            "{name} should have grown by {at_least}:\nbefore:\n{}\nafter:\n{}",
            after.0,
            stored.0
        );
    }

    // Execution: one action running, one queued, then both done.
    let outside = outside_dir();
    let go = outside.path().join("go");
    let succeeded = [("outcome", "success")];
    let executed_before = stored.value("rexd_action_duration_seconds_count", &succeeded);
    let execute_calls_before = stored.value("rexd_rpc_requests_total", &[("method", EXECUTE)]);
    let first = sh(format!("{}; echo one", wait_for_file(&go))).build();
    let second = sh(format!("{}; echo two", wait_for_file(&go))).build();
    first.upload(&server).await;
    second.upload(&server).await;
    let mut first_stream = exec::start(&server, first.request()).await.unwrap();
    exec::wait_for_stage(&mut first_stream, Stage::Executing).await;
    let mut second_stream = exec::start(&server, second.request()).await.unwrap();
    let busy = scrape_until(addr, "one action running and one queued", |m| {
        m.value("rexd_actions_running", &[]) == 1.0 && m.value("rexd_actions_queued", &[]) == 1.0
    })
    .await;
    assert_eq!(busy.expect("rexd_worker_utilisation", &[]), 1.0);
    assert!(busy.expect("rexd_operations", &[]) >= 2.0);

    std::fs::write(&go, "").unwrap();
    for stream in [&mut first_stream, &mut second_stream] {
        let op = exec::wait_for_stage(stream, Stage::Completed).await;
        assert_eq!(exec::response(&op).result.unwrap().exit_code, 0);
    }
    let idle = scrape_until(addr, "the workers to go idle", |m| {
        m.value("rexd_actions_running", &[]) == 0.0 && m.value("rexd_actions_queued", &[]) == 0.0
    })
    .await;
    assert_eq!(idle.expect("rexd_worker_utilisation", &[]), 0.0);
    assert!(
        idle.expect("rexd_action_duration_seconds_count", &succeeded) >= executed_before + 2.0,
        "both actions should be timed:\n{}",
        idle.0
    );
    idle.expect("rexd_action_duration_seconds_sum", &succeeded);
    assert!(
        idle.expect("rexd_rpc_requests_total", &[("method", EXECUTE)])
            >= execute_calls_before + 2.0
    );

    // A failing action is timed under its own outcome.
    let failed = [("outcome", "nonzero_exit")];
    let failed_before = idle.value("rexd_action_duration_seconds_count", &failed);
    let response = exec::run(&server, &sh("exit 3")).await;
    assert_eq!(response.result.unwrap().exit_code, 3);
    let m = scrape(addr).await;
    assert!(m.expect("rexd_action_duration_seconds_count", &failed) > failed_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_unknown_paths() {
    let (mut server, addr) = metrics_server(1).await;
    let (status, content_type, body) = http_get(addr, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let (status, _, body) = http_get(addr, "/nope").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("/metrics"), "{body}");

    // During a graceful shutdown (held open by a running action) /healthz says 503.
    let outside = outside_dir();
    let go = outside.path().join("go");
    let action = sh(wait_for_file(&go)).build();
    action.upload(&server).await;
    let mut stream = exec::start(&server, action.request()).await.unwrap();
    exec::wait_for_stage(&mut stream, Stage::Executing).await;
    server.begin_shutdown();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        let (status, _, body) = http_get(addr, "/healthz").await.unwrap();
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never said 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(body.contains("shutting down"), "{body}");
    std::fs::write(&go, "").unwrap();
    let op = exec::wait_for_stage(&mut stream, Stage::Completed).await;
    assert_eq!(exec::response(&op).result.unwrap().exit_code, 0);
    tokio::time::timeout(PATIENCE, server.join())
        .await
        .expect("the server should stop once the action is done")
        .expect("a clean stop");
    // The metrics listener goes away with the server.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while http_get(addr, "/healthz").await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics port still answers after the server stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
