//! `rexd-bench`: a load generator that speaks plain REAPI v2 to any server (rexd, Buildbarn,
//! BuildGrid, NativeLink...) and reports throughput and latency figures.
//!
//! # Layout
//! - `conn`: the connection, Capabilities, batch packing and ByteStream writes.
//! - `data`: seeded pseudo-random blobs with a per-run salt.
//! - `transfer`: the `upload` and `download` workloads (ByteStream).
//! - `cas`: the `batch` and `find-missing` workloads.
//! - `exec`: `exec-noop`, `exec-cached`, `exec-throughput` and the Execute helpers.
//! - `stage`: an action over a wide input tree.
//! - `soak`: a long request mix reported window by window (not part of `all`).
//! - `chunked`: a changed large blob sent as FastCDC chunks, SpliceBlob (not part of `all`).
//! - `report`: figures, statistics, machine facts, server RSS; `json`: the `--json` writer.
//! - `workers`: the `--workers` report (actions per executor, worker cache hit rate).
//! - `workload`: the names of the workloads and which run by default.

mod cas;
mod chunked;
mod conn;
mod data;
mod exec;
mod json;
mod report;
mod soak;
mod stage;
mod tier;
mod transfer;
mod workers;
mod workload;

use std::collections::BTreeSet;

use std::process::ExitCode;
use std::time::{Duration, Instant};
use workload::Workload;

use bytesize::ByteSize;
use clap::Parser;

use crate::conn::Conn;
use crate::exec::ExecEnv;
use crate::json::Json;
use crate::report::{Outcome, RssPeak};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Parser)]
#[command(
    name = "rexd-bench",
    version,
    about = "Measures a Remote Execution API v2 server: ByteStream, CAS and execution figures",
    after_help = "Workloads run in the order listed above; with none (or `all`), all of them.",
    // A later flag wins, so scripts can append overrides to their defaults.
    args_override_self = true
)]
struct Cli {
    /// Server to measure, `grpc://HOST:PORT` (plaintext).
    #[arg(long)]
    target: String,
    /// REAPI instance name to use.
    #[arg(long, default_value = "")]
    instance: String,
    /// Print one JSON object with every figure on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Seed of the generated data; a fresh salt still makes every run's blobs new.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size of the `upload`/`download` blob, e.g. 256MiB.
    #[arg(long, default_value = "256MiB")]
    upload_size: ByteSize,
    /// Concurrent `upload`/`download` streams, each its own blob and connection.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Blobs (100 B-4 KiB) uploaded by `batch`.
    #[arg(long, default_value_t = 10_000)]
    batch_count: usize,
    /// BatchUpdateBlobs requests in flight during `batch`.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Digests per FindMissingBlobs call in `find-missing` (half of them present).
    #[arg(long, default_value_t = 10_000)]
    find_missing_count: usize,
    /// Timed FindMissingBlobs calls in `find-missing`.
    #[arg(long, default_value_t = 20)]
    find_missing_calls: usize,
    /// Timed actions of `exec-noop`.
    #[arg(long, default_value_t = 100)]
    exec_count: usize,
    /// Timed cache-hit Executes of `exec-cached`.
    #[arg(long, default_value_t = 500)]
    cached_count: usize,
    /// Actions of `exec-throughput`.
    #[arg(long, default_value_t = 500)]
    throughput_count: usize,
    /// Actions in flight during `exec-throughput`.
    #[arg(long, default_value_t = 16)]
    throughput_concurrency: usize,
    /// Input files of the `stage` action.
    #[arg(long, default_value_t = 10_000)]
    stage_files: usize,
    /// Directories the `stage` files are spread over.
    #[arg(long, default_value_t = 100)]
    stage_dirs: usize,
    /// Timed runs of the `stage` action (each a new action over the same tree).
    #[arg(long, default_value_t = 3)]
    stage_runs: usize,
    /// Requests `soak` sends in all.
    #[arg(long, default_value_t = 1_000_000)]
    soak_requests: u64,
    /// Requests per `soak` report window.
    #[arg(long, default_value_t = 50_000)]
    soak_window: u64,
    /// Requests in flight during `soak`.
    #[arg(long, default_value_t = 16)]
    soak_concurrency: usize,
    /// Untimed iterations before each timed execution loop.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Platform property every action asks for, `NAME=VALUE` (repeatable).
    #[arg(long = "platform", value_name = "NAME=VALUE", value_parser = parse_property)]
    platform: Vec<(String, String)>,
    /// The execution workloads' actions run `/bin/sleep SECONDS` instead of `/bin/true`
    /// (for scheduling figures: how many actions run at once, over how many workers).
    #[arg(long, value_name = "SECONDS")]
    action_sleep: Option<f64>,
    /// Report how exec-noop's and exec-throughput's actions spread over the executors
    /// (ExecutedActionMetadata.worker).
    #[arg(long)]
    workers: bool,
    /// A `rexd worker`'s metrics, `http://HOST:PORT/metrics` (repeatable): `--workers` then
    /// also reports the workers' local CAS cache hit rate.
    #[arg(long = "worker-metrics", value_name = "URL")]
    worker_metrics: Vec<String>,
    /// Longest one Execute may take, in seconds.
    #[arg(long, default_value_t = 600)]
    exec_timeout: u64,
    /// Size of the `chunked-update` blob, e.g. 256MiB (1 MiB of it changes at the middle).
    #[arg(long, default_value = "256MiB")]
    chunked_size: ByteSize,
    /// `tier`: a second frontend on the same bucket as `--target`, with an empty disk.
    #[arg(long, value_name = "URL")]
    second_target: Option<String>,
    /// PID of a local server: report its RSS idle and the peak during each workload.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Workloads to run.
    #[arg(value_enum)]
    workloads: Vec<Workload>,
}

fn parse_property(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

impl Cli {
    /// The workloads to run, in canonical order, and whether they were named explicitly.
    fn selected(&self) -> (Vec<Workload>, bool) {
        let named: BTreeSet<Workload> = self.workloads.iter().copied().collect();
        if named.is_empty() || named.contains(&Workload::All) {
            (Workload::EVERY.to_vec(), false)
        } else {
            (named.into_iter().collect(), true)
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.upload_size.as_u64() < 64 {
            return Err("--upload-size must be at least 64 bytes".into());
        }
        if self
            .action_sleep
            .is_some_and(|s| !(s.is_finite() && s > 0.0))
        {
            return Err("--action-sleep must be a positive number of seconds".into());
        }
        if !self.worker_metrics.is_empty() && !self.workers {
            return Err(
                "--worker-metrics is read only for the --workers report; add --workers".into(),
            );
        }
        let counts = [
            ("--parallel", self.parallel),
            ("--batch-count", self.batch_count),
            ("--find-missing-count", self.find_missing_count),
            ("--find-missing-calls", self.find_missing_calls),
            ("--exec-count", self.exec_count),
            ("--cached-count", self.cached_count),
            ("--throughput-count", self.throughput_count),
            ("--throughput-concurrency", self.throughput_concurrency),
            ("--stage-dirs", self.stage_dirs),
            ("--stage-runs", self.stage_runs),
            ("--soak-requests", self.soak_requests as usize),
            ("--soak-window", self.soak_window as usize),
            ("--soak-concurrency", self.soak_concurrency),
        ];
        match counts.iter().find(|(_, n)| *n == 0) {
            Some((flag, _)) => Err(format!("{flag} must be at least 1")),
            None => Ok(()),
        }
    }
}

/// Where progress lines go: stdout, or stderr when stdout carries the JSON.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, text: &str) {
        if self.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

/// How one workload ended.
enum Ran {
    /// The figures, the wall time including setup, and the server's peak RSS in MiB.
    Done(Outcome, Duration, Option<f64>),
    Failed(String),
    Skipped(&'static str),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.check() {
        eprintln!("rexd-bench: {e}");
        return ExitCode::from(2);
    }
    let out = Out { json: cli.json };
    let conn = match Conn::open(&cli.target, &cli.instance).await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("rexd-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let date = report::utc_now();
    let rss_idle = cli
        .server_pid
        .and_then(report::rss_kib)
        .map(|kib| kib as f64 / 1024.0);
    out.line(&format!(
        "rexd-bench {} -> {} (instance {:?}, REAPI {}, batch limit {} B, execution {}){}",
        env!("CARGO_PKG_VERSION"),
        cli.target,
        cli.instance,
        conn.api_version,
        conn.batch_limit,
        if conn.exec_enabled { "on" } else { "off" },
        rss_idle.map_or(String::new(), |mib| format!(
            ", server RSS idle {mib:.1} MiB"
        )),
    ));

    let (workloads, explicit) = cli.selected();
    let mut results: Vec<(Workload, Ran)> = Vec::new();
    let mut uploaded: Option<transfer::Uploaded> = None;
    for workload in workloads {
        let ran = if workload.needs_execution() && !conn.exec_enabled && !explicit {
            Ran::Skipped("the server reports exec_enabled = false")
        } else {
            let rss = cli.server_pid.map(RssPeak::start);
            let started = Instant::now();
            let result = run(&cli, &out, &conn, workload, &mut uploaded).await;
            let peak = rss.and_then(RssPeak::finish);
            match result {
                Ok(outcome) => Ran::Done(outcome, started.elapsed(), peak),
                Err(e) => Ran::Failed(e.to_string()),
            }
        };
        out.line(&progress_line(workload, &ran));
        results.push((workload, ran));
    }

    let failed = results.iter().any(|(_, r)| matches!(r, Ran::Failed(_)));
    out.line("");
    for line in summary(&results) {
        out.line(&line);
    }
    if cli.json {
        println!("{}", json_report(&cli, &conn, &date, rss_idle, results));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(
    cli: &Cli,
    out: &Out,
    conn: &Conn,
    workload: Workload,
    uploaded: &mut Option<transfer::Uploaded>,
) -> Result<Outcome> {
    let env = ExecEnv {
        platform: cli.platform.clone(),
        timeout: Duration::from_secs(cli.exec_timeout),
        warmup: cli.warmup,
        command: match cli.action_sleep {
            Some(seconds) => vec!["/bin/sleep".into(), seconds.to_string()],
            None => vec!["/bin/true".into()],
        },
        workers: cli.workers.then(|| cli.worker_metrics.clone()),
    };
    let size =
        usize::try_from(cli.upload_size.as_u64()).map_err(|_| "--upload-size is too large")?;
    match workload {
        Workload::Upload => {
            let (outcome, blobs) = transfer::upload(conn, cli.seed, size, cli.parallel).await?;
            *uploaded = Some(blobs);
            Ok(outcome)
        }
        Workload::Download => {
            // Without a preceding upload, write the blob first (not timed).
            let blobs = match uploaded.take() {
                Some(blobs) => blobs,
                None => {
                    transfer::upload(conn, cli.seed, size, cli.parallel)
                        .await?
                        .1
                }
            };
            let outcome = transfer::download(conn, &blobs).await;
            *uploaded = Some(blobs);
            outcome
        }
        Workload::Batch => cas::batch(conn, cli.seed, cli.batch_count, cli.batch_concurrency).await,
        Workload::FindMissing => {
            cas::find_missing(
                conn,
                cli.seed,
                cli.find_missing_count,
                cli.find_missing_calls,
            )
            .await
        }
        Workload::ExecNoop => exec::noop(conn, &env, cli.exec_count).await,
        Workload::ExecCached => exec::cached(conn, &env, cli.cached_count).await,
        Workload::ExecThroughput => {
            exec::throughput(conn, &env, cli.throughput_count, cli.throughput_concurrency).await
        }
        Workload::Stage => {
            let (files, dirs, runs) = (cli.stage_files, cli.stage_dirs, cli.stage_runs);
            stage::stage(conn, &env, cli.seed, files, dirs, runs).await
        }
        Workload::Soak => {
            let params = soak::SoakParams {
                requests: cli.soak_requests,
                window: cli.soak_window,
                concurrency: cli.soak_concurrency,
                server_pid: cli.server_pid,
            };
            soak::soak(conn, env, params, &|line| out.line(line)).await
        }
        Workload::Tier => {
            let reader = cli
                .second_target
                .as_deref()
                .ok_or("tier needs --second-target")?;
            let (count, calls) = (cli.find_missing_count, cli.find_missing_calls);
            let p = tier::TierParams {
                reader,
                seed: cli.seed,
                size,
                count,
                calls,
            };
            tier::tier(conn, p).await
        }
        Workload::ChunkedUpdate => {
            let size = usize::try_from(cli.chunked_size.as_u64())
                .map_err(|_| "--chunked-size is too large")?;
            chunked::chunked_update(conn, cli.seed, size).await
        }
        Workload::All => unreachable!("`all` is expanded before running"),
    }
}

/// The line printed as a workload finishes.
fn progress_line(workload: Workload, ran: &Ran) -> String {
    let name = workload.name();
    match ran {
        Ran::Done(outcome, elapsed, peak) => format!(
            "{name:<16} {}  [{}; {:.1} s{}]",
            outcome.headline,
            outcome.detail,
            elapsed.as_secs_f64(),
            peak.map_or(String::new(), |mib| format!(
                ", server RSS peak {mib:.1} MiB"
            )),
        ),
        Ran::Failed(e) => format!("{name:<16} FAILED: {e}"),
        Ran::Skipped(why) => format!("{name:<16} skipped: {why}"),
    }
}

/// The closing table: one line per workload.
fn summary(results: &[(Workload, Ran)]) -> Vec<String> {
    let rows: Vec<(String, String, String)> = results
        .iter()
        .map(|(w, ran)| {
            let (result, rss) = match ran {
                Ran::Done(outcome, _, peak) => (
                    outcome.headline.clone(),
                    peak.map_or("-".to_string(), |mib| format!("{mib:.1} MiB")),
                ),
                Ran::Failed(_) => ("FAILED".to_string(), "-".to_string()),
                Ran::Skipped(_) => ("skipped".to_string(), "-".to_string()),
            };
            (w.name().to_string(), result, rss)
        })
        .collect();
    let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(6);
    let mut lines = vec![format!(
        "{:<16} {:<width$}  server RSS peak",
        "workload", "result"
    )];
    lines.extend(
        rows.into_iter()
            .map(|(name, result, rss)| format!("{name:<16} {result:<width$}  {rss}")),
    );
    lines
}

fn json_report(
    cli: &Cli,
    conn: &Conn,
    date: &str,
    rss_idle: Option<f64>,
    results: Vec<(Workload, Ran)>,
) -> Json {
    let mut figures = Json::obj();
    let mut workloads = Vec::new();
    for (workload, ran) in results {
        let mut entry = Json::obj().with("name", workload.name());
        match ran {
            Ran::Done(outcome, elapsed, peak) => {
                let mut own = Json::obj();
                for figure in &outcome.figures {
                    figures.set(figure.key, figure.value);
                    own.set(figure.key, figure.value);
                }
                entry.set("status", "ok");
                entry.set("figures", own);
                entry.set("summary", outcome.headline);
                entry.set("detail", outcome.detail);
                entry.set("wall_seconds", elapsed.as_secs_f64());
                entry.set("server_rss_peak_mib", peak);
                entry.set("params", outcome.params);
            }
            Ran::Failed(e) => {
                entry.set("status", "failed");
                entry.set("error", e);
            }
            Ran::Skipped(why) => {
                entry.set("status", "skipped");
                entry.set("error", why);
            }
        }
        workloads.push(entry);
    }
    Json::obj()
        .with("tool", format!("rexd-bench {}", env!("CARGO_PKG_VERSION")))
        .with("date", date)
        .with("target", cli.target.clone())
        .with("instance", cli.instance.clone())
        .with("seed", cli.seed)
        .with("machine", report::machine())
        .with(
            "server",
            Json::obj()
                .with("api_version", conn.api_version.clone())
                .with("batch_limit_bytes", conn.batch_limit)
                .with("exec_enabled", conn.exec_enabled)
                .with("pid", cli.server_pid.map(u64::from))
                .with("rss_idle_mib", rss_idle),
        )
        .with("figures", figures)
        .with("workloads", Json::Arr(workloads))
}
