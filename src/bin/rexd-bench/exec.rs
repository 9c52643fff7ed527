//! Execution workloads: `exec-noop` (uncached round trips), `exec-cached` (action-cache
//! hits through Execute) and `exec-throughput` (many actions at once), plus the action
//! building and Execute-until-done helpers `stage` shares.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use rexd::proto::longrunning::operation;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_client::ExecutionClient;
use tonic::transport::Channel;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data;
use crate::json::Json;
use crate::report::{Figure, Latencies, Outcome};
use crate::workers;

/// Environment variable that makes otherwise identical actions distinct.
pub const SALT_VAR: &str = "REXD_BENCH_SALT";

/// What every action of a run shares.
pub struct ExecEnv {
    /// Platform properties to request (some servers need e.g. OSFamily to route actions).
    pub platform: Vec<(String, String)>,
    /// Longest one Execute may take, end to end.
    pub timeout: Duration,
    /// Actions (or calls) run before each timed loop.
    pub warmup: usize,
    /// What the actions run: `/bin/true`, or `/bin/sleep S` with `--action-sleep`.
    pub command: Vec<String>,
    /// `--workers`: report the spread over executors, and the cache counters of the
    /// workers whose `/metrics` these URLs serve.
    pub workers: Option<Vec<String>>,
}

impl ExecEnv {
    fn command_line(&self) -> String {
        self.command.join(" ")
    }

    /// The workers' cache counters now, when `--workers` names some `/metrics`.
    pub async fn scrape_workers(&self) -> Result<Option<workers::CacheCounters>> {
        match &self.workers {
            Some(urls) if !urls.is_empty() => Ok(Some(workers::scrape(urls).await?)),
            _ => Ok(None),
        }
    }

    /// The `--workers` part of a report, or nothing without it.
    pub fn worker_report(
        &self,
        tally: &workers::Tally,
        before: Option<workers::CacheCounters>,
        after: Option<workers::CacheCounters>,
        params: &mut Json,
    ) -> String {
        if self.workers.is_none() {
            return String::new();
        }
        let (text, json) = workers::report(tally, before, after);
        params.set("workers", json);
        text
    }
}

/// An encoded action and the Action and Command blobs it needs (its input tree apart).
pub struct Action {
    pub digest: re::Digest,
    pub blobs: [Bytes; 2],
}

/// The run's command (`/bin/true` by default) over `input_root`, made distinct by `salt` in
/// its environment.
pub fn true_action(env: &ExecEnv, salt: String, input_root: &re::Digest) -> Action {
    let platform = (!env.platform.is_empty()).then(|| re::Platform {
        properties: env
            .platform
            .iter()
            .map(|(name, value)| re::platform::Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    });
    // Command.platform is deprecated since v2.2 but still read by older servers.
    #[allow(deprecated)]
    let command = re::Command {
        arguments: env.command.clone(),
        environment_variables: vec![re::command::EnvironmentVariable {
            name: SALT_VAR.into(),
            value: salt,
        }],
        platform: platform.clone(),
        ..Default::default()
    };
    let command = Bytes::from(command.encode_to_vec());
    let action = re::Action {
        command_digest: Some(conn::digest(&command)),
        input_root_digest: Some(input_root.clone()),
        platform,
        ..Default::default()
    };
    let action = Bytes::from(action.encode_to_vec());
    Action {
        digest: conn::digest(&action),
        blobs: [action, command],
    }
}

/// The digest of an empty Directory, the input root of the no-op actions.
pub fn empty_root() -> re::Digest {
    conn::digest(&re::Directory::default().encode_to_vec())
}

/// Uploads the blobs of `actions` (not timed).
pub async fn upload_actions(conn: &Conn, actions: &[Action]) -> Result<()> {
    let blobs: Vec<Bytes> = actions.iter().flat_map(|a| a.blobs.clone()).collect();
    conn.upload(&blobs).await
}

/// Runs Execute until the operation is done (following WaitExecution if the server ends
/// the stream early); returns the response and the round trip. Errors unless the action ran
/// (or was found in the cache) and exited 0.
pub async fn execute(
    mut client: ExecutionClient<Channel>,
    instance: &str,
    action: &re::Digest,
    timeout: Duration,
) -> Result<(re::ExecuteResponse, Duration)> {
    let started = Instant::now();
    let run = async {
        let mut stream = client
            .execute(re::ExecuteRequest {
                instance_name: instance.to_string(),
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("Execute: {e}"))?
            .into_inner();
        let mut name = String::new();
        loop {
            match stream
                .message()
                .await
                .map_err(|e| format!("Execute: {e}"))?
            {
                Some(op) if op.done => {
                    // Read the stream to its end: dropping it early makes the client reset
                    // the stream, and h2 closes a connection after 1024 such resets.
                    while stream
                        .message()
                        .await
                        .map_err(|e| format!("Execute: {e}"))?
                        .is_some()
                    {}
                    return finished(op.result);
                }
                Some(op) => name = op.name,
                None if name.is_empty() => {
                    return Err("the Execute stream ended before naming an operation".into());
                }
                None => {
                    stream = client
                        .wait_execution(re::WaitExecutionRequest { name: name.clone() })
                        .await
                        .map_err(|e| format!("WaitExecution: {e}"))?
                        .into_inner();
                }
            }
        }
    };
    let response = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("the action did not finish within {} s", timeout.as_secs()))??;
    Ok((response, started.elapsed()))
}

/// The ExecuteResponse of a finished operation, checked for success.
fn finished(result: Option<operation::Result>) -> Result<re::ExecuteResponse> {
    let any = match result {
        Some(operation::Result::Response(any)) => any,
        Some(operation::Result::Error(status)) => {
            return Err(
                format!("operation failed: code {}: {}", status.code, status.message).into(),
            );
        }
        None => return Err("a done operation without a result".into()),
    };
    let response = re::ExecuteResponse::decode(&any.value[..])
        .map_err(|e| format!("decoding the ExecuteResponse: {e}"))?;
    if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
        return Err(format!(
            "the action failed: code {}: {}",
            status.code, status.message
        )
        .into());
    }
    let result = response
        .result
        .as_ref()
        .ok_or("an ExecuteResponse without a result")?;
    if result.exit_code != 0 {
        return Err(format!(
            "the action exited {}: {}",
            result.exit_code,
            String::from_utf8_lossy(&result.stderr_raw)
        )
        .into());
    }
    Ok(response)
}

/// Milliseconds from `a` to `b`, when the server filled both.
pub fn span(a: &Option<prost_types::Timestamp>, b: &Option<prost_types::Timestamp>) -> Option<f64> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    if a.seconds == 0 && a.nanos == 0 || b.seconds == 0 && b.nanos == 0 {
        return None;
    }
    Some((b.seconds - a.seconds) as f64 * 1e3 + f64::from(b.nanos - a.nanos) / 1e6)
}

/// Medians of the phases the server reports in ExecutedActionMetadata.
#[derive(Default)]
struct Phases {
    queued: Vec<f64>,
    fetch: Vec<f64>,
    run: Vec<f64>,
    upload: Vec<f64>,
}

impl Phases {
    fn add(&mut self, response: &re::ExecuteResponse) {
        let Some(m) = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
        else {
            return;
        };
        let pairs = [
            (
                &mut self.queued,
                &m.queued_timestamp,
                &m.worker_start_timestamp,
            ),
            (
                &mut self.fetch,
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
            (
                &mut self.run,
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
            (
                &mut self.upload,
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        ];
        for (samples, a, b) in pairs {
            if let Some(ms) = span(a, b) {
                samples.push(ms);
            }
        }
    }

    /// `server: queue 0.05, fetch 0.10, run 1.20, upload 0.08 ms (medians)`, or nothing.
    fn describe(self) -> String {
        let parts: Vec<String> = [
            ("queue", self.queued),
            ("fetch", self.fetch),
            ("run", self.run),
            ("upload", self.upload),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(name, v)| format!("{name} {:.2}", Latencies::from_ms(v).median()))
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("; server {} ms (medians)", parts.join(", "))
        }
    }
}

/// `count` distinct no-op actions, distinct from any earlier run's.
fn noop_actions(env: &ExecEnv, what: &str, count: usize) -> Vec<Action> {
    let salt = data::salt_hex(&data::fresh_salt());
    let root = empty_root();
    (0..count)
        .map(|i| true_action(env, format!("{salt}-{what}-{i}"), &root))
        .collect()
}

fn latency_outcome(
    prefix: &'static [&'static str; 2],
    latencies: &Latencies,
    detail: String,
    params: Json,
) -> Outcome {
    let (median, p95) = (latencies.median(), latencies.p95());
    Outcome {
        figures: vec![
            Figure {
                key: prefix[0],
                value: Some(median),
            },
            Figure {
                key: prefix[1],
                value: Some(p95),
            },
        ],
        headline: format!("median {median:.2} ms, p95 {p95:.2} ms"),
        detail,
        params,
    }
}

/// Uncached actions one after another.
pub async fn noop(conn: &Conn, env: &ExecEnv, count: usize) -> Result<Outcome> {
    let actions = noop_actions(env, "noop", env.warmup + count);
    upload_actions(conn, &actions).await?;
    let client = conn.execution();
    let mut samples = Vec::with_capacity(count);
    let mut phases = Phases::default();
    let mut tally = workers::Tally::default();
    let mut before = None;
    for (i, action) in actions.iter().enumerate() {
        if i == env.warmup {
            before = env.scrape_workers().await?;
        }
        let (response, elapsed) =
            execute(client.clone(), &conn.instance, &action.digest, env.timeout).await?;
        if response.cached_result {
            return Err("a new action was answered from the cache".into());
        }
        if i >= env.warmup {
            samples.push(elapsed);
            phases.add(&response);
            tally.add(&response);
        }
    }
    let after = env.scrape_workers().await?;
    let latencies = Latencies::new(&samples);
    let mut params = Json::obj()
        .with("actions", count)
        .with("warmup", env.warmup);
    let spread = env.worker_report(&tally, before, after, &mut params);
    let detail = format!(
        "{count} uncached {} after {} warm-up{}{spread}",
        env.command_line(),
        env.warmup,
        phases.describe()
    );
    Ok(latency_outcome(
        &["exec_noop_median_ms", "exec_noop_p95_ms"],
        &latencies,
        detail,
        params,
    ))
}

/// One action run once, then Executed `count` times more, each a cache hit.
pub async fn cached(conn: &Conn, env: &ExecEnv, count: usize) -> Result<Outcome> {
    let actions = noop_actions(env, "cached", 1);
    upload_actions(conn, &actions).await?;
    let digest = &actions[0].digest;
    let client = conn.execution();
    execute(client.clone(), &conn.instance, digest, env.timeout).await?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..env.warmup + count {
        let (response, elapsed) =
            execute(client.clone(), &conn.instance, digest, env.timeout).await?;
        if !response.cached_result {
            return Err("Execute of an action that already ran was not a cache hit \
                        (ExecuteResponse.cached_result is false)"
                .into());
        }
        if i >= env.warmup {
            samples.push(elapsed);
        }
    }
    let latencies = Latencies::new(&samples);
    let detail = format!("{count} cache hits after {} warm-up", env.warmup);
    let params = Json::obj()
        .with("executes", count)
        .with("warmup", env.warmup);
    Ok(latency_outcome(
        &["exec_cached_median_ms", "exec_cached_p95_ms"],
        &latencies,
        detail,
        params,
    ))
}

/// `count` distinct uncached actions, `concurrency` in flight.
pub async fn throughput(
    conn: &Conn,
    env: &ExecEnv,
    count: usize,
    concurrency: usize,
) -> Result<Outcome> {
    let warmup = env.warmup.max(concurrency);
    let actions = noop_actions(env, "throughput", warmup + count);
    upload_actions(conn, &actions).await?;
    let client = conn.execution();
    let run = |actions: &[Action]| {
        let digests: Vec<re::Digest> = actions.iter().map(|a| a.digest.clone()).collect();
        let client = client.clone();
        async move {
            futures::stream::iter(digests)
                .map(|d| {
                    let client = client.clone();
                    async move { execute(client, &conn.instance, &d, env.timeout).await }
                })
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<(re::ExecuteResponse, Duration)>>()
                .await
        }
    };
    run(&actions[..warmup]).await?;
    let before = env.scrape_workers().await?;
    let started = Instant::now();
    let runs = run(&actions[warmup..]).await?;
    let elapsed = started.elapsed();
    let after = env.scrape_workers().await?;
    let rate = count as f64 / elapsed.as_secs_f64();
    let mut tally = workers::Tally::default();
    for (response, _) in &runs {
        tally.add(response);
    }
    let samples: Vec<Duration> = runs.iter().map(|(_, elapsed)| *elapsed).collect();
    let latencies = Latencies::new(&samples);
    let mut params = Json::obj()
        .with("actions", count)
        .with("concurrency", concurrency)
        .with("warmup", warmup)
        .with("seconds", elapsed.as_secs_f64());
    let spread = env.worker_report(&tally, before, after, &mut params);
    Ok(Outcome {
        figures: vec![Figure {
            key: "exec_throughput_actions_per_s",
            value: Some(rate),
        }],
        headline: format!("{rate:.0} actions/s"),
        detail: format!(
            "{count} uncached {}, {concurrency} in flight, {:.2} s; \
             round trip median {:.2} ms, p95 {:.2} ms{spread}",
            env.command_line(),
            elapsed.as_secs_f64(),
            latencies.median(),
            latencies.p95()
        ),
        params,
    })
}
