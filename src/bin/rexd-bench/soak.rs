//! The `soak` workload: a long mix of the requests a build server sees most (cache-hit
//! Executes, GetActionResult, FindMissingBlobs, small BatchUpdateBlobs and a few uncached
//! no-op Executes), reported window by window so that any drift in latency, throughput or
//! server memory shows up as a trend rather than hiding in one average.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use tokio::sync::mpsc;

use crate::Result;
use crate::cas::SMALL_BLOB;
use crate::conn::{self, Conn};
use crate::data::{self, Rng};
use crate::exec::{self, Action, ExecEnv};
use crate::json::Json;
use crate::report::{Figure, Latencies, Outcome, rss_kib};

/// Cached actions the cache-hit requests rotate over.
const CACHED_ACTIONS: usize = 64;
/// Present blobs the FindMissingBlobs requests ask about.
const PRESENT_BLOBS: usize = 1000;
/// Digests per FindMissingBlobs request (a quarter of them absent).
const FIND_MISSING_DIGESTS: usize = 100;
/// Blobs per BatchUpdateBlobs request: one new, the rest already stored.
const BATCH_BLOBS: usize = 4;

/// The kinds of request in the mix, with their share out of every 100 requests.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ExecCached,
    GetActionResult,
    FindMissing,
    BatchUpdate,
    ExecUncached,
}

const MIX: [(Kind, u64); 5] = [
    (Kind::ExecCached, 40),
    (Kind::GetActionResult, 35),
    (Kind::FindMissing, 19),
    (Kind::BatchUpdate, 5),
    (Kind::ExecUncached, 1),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ExecCached => "exec-cached",
            Kind::GetActionResult => "get-action-result",
            Kind::FindMissing => "find-missing",
            Kind::BatchUpdate => "batch-update",
            Kind::ExecUncached => "exec-uncached",
        }
    }

    /// Request `i`'s kind: a fixed interleaving, so every window holds the same mix.
    fn of(i: u64) -> Kind {
        let mut slot = (i * 37) % 100; // 37 is coprime with 100: spreads the kinds out.
        for (kind, share) in MIX {
            if slot < share {
                return kind;
            }
            slot -= share;
        }
        unreachable!("the shares add up to 100")
    }
}

/// Soak parameters from the command line.
pub struct SoakParams {
    pub requests: u64,
    pub window: u64,
    pub concurrency: usize,
    pub server_pid: Option<u32>,
}

/// What every request task shares.
struct Fixture {
    conn: Conn,
    env: ExecEnv,
    cached: Vec<re::Digest>,
    find_missing: re::FindMissingBlobsRequest,
    /// Blobs already stored, padding each batch.
    stored: Vec<Bytes>,
    salt: String,
}

/// One window's figures.
struct Window {
    latencies: BTreeMap<Kind, Vec<f64>>,
    started: Instant,
}

pub async fn soak(
    conn: &Conn,
    env: ExecEnv,
    params: SoakParams,
    print: &dyn Fn(&str),
) -> Result<Outcome> {
    let fixture = Arc::new(setup(conn, env).await?);
    let next = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::channel::<Result<(Kind, f64)>>(1024);
    for _ in 0..params.concurrency {
        let (fixture, next, tx) = (fixture.clone(), next.clone(), tx.clone());
        let total = params.requests;
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let kind = Kind::of(i);
                let started = Instant::now();
                let outcome = request(&fixture, kind, i).await;
                let sample = outcome.map(|()| (kind, started.elapsed().as_secs_f64() * 1e3));
                if tx.send(sample).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);

    print(&format!(
        "  soak: {} requests, {} in flight, a window every {}",
        params.requests, params.concurrency, params.window
    ));
    let began = Instant::now();
    let mut window = Window::new();
    let mut done = 0u64;
    let mut rows = Vec::new();
    let mut rss_peak: Option<f64> = None;
    while let Some(sample) = rx.recv().await {
        let (kind, ms) = sample?;
        window.latencies.entry(kind).or_default().push(ms);
        done += 1;
        if done % params.window == 0 || done == params.requests {
            let rss = params
                .server_pid
                .and_then(rss_kib)
                .map(|k| k as f64 / 1024.0);
            rss_peak = match (rss_peak, rss) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let (line, json) = window.report(done, rss);
            print(&line);
            rows.push(json);
            window = Window::new();
        }
    }
    let elapsed = began.elapsed();
    if done < params.requests {
        return Err(format!("only {done} of {} requests completed", params.requests).into());
    }
    let rate = done as f64 / elapsed.as_secs_f64();
    Ok(Outcome {
        figures: vec![
            Figure {
                key: "soak_requests_per_s",
                value: Some(rate),
            },
            Figure {
                key: "soak_rss_peak_mib",
                value: rss_peak,
            },
        ],
        headline: format!("{rate:.0} requests/s over {done}"),
        detail: format!(
            "{} windows of {}, {} in flight, {:.1} s{}",
            rows.len(),
            params.window,
            params.concurrency,
            elapsed.as_secs_f64(),
            rss_peak.map_or(String::new(), |m| format!(
                ", RSS at window ends peak {m:.1} MiB"
            ))
        ),
        params: Json::obj()
            .with("requests", done)
            .with("window", params.window)
            .with("concurrency", params.concurrency)
            .with("seconds", elapsed.as_secs_f64())
            .with("windows", Json::Arr(rows)),
    })
}

impl Window {
    fn new() -> Self {
        Window {
            latencies: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    /// The printed line and the JSON row of a finished window ending at request `done`.
    fn report(self, done: u64, rss: Option<f64>) -> (String, Json) {
        let count: usize = self.latencies.values().map(Vec::len).sum();
        let rate = count as f64 / self.started.elapsed().as_secs_f64();
        let mut parts = Vec::new();
        let mut kinds = Json::obj();
        for (kind, samples) in self.latencies {
            let n = samples.len();
            let l = Latencies::from_ms(samples);
            let (p50, p99) = (l.median(), l.percentile(99.0));
            parts.push(format!("{} {p50:.2}/{p99:.2}", kind.name()));
            kinds.set(
                kind.name(),
                Json::obj()
                    .with("count", n)
                    .with("p50_ms", p50)
                    .with("p99_ms", p99),
            );
        }
        let line = format!(
            "  soak {done:>9}: {rate:>7.0} req/s, RSS {}; p50/p99 ms: {}",
            rss.map_or("-".into(), |m| format!("{m:.1} MiB")),
            parts.join(", ")
        );
        let json = Json::obj()
            .with("requests_done", done)
            .with("requests_per_s", rate)
            .with("rss_mib", rss)
            .with("kinds", kinds);
        (line, json)
    }
}

/// Uploads and runs what the mix needs: the cached actions, the present blobs.
async fn setup(conn: &Conn, env: ExecEnv) -> Result<Fixture> {
    let salt = data::salt_hex(&data::fresh_salt());
    let root = exec::empty_root();
    let actions: Vec<Action> = (0..CACHED_ACTIONS)
        .map(|i| exec::true_action(&env, format!("{salt}-soak-cached-{i}"), &root))
        .collect();
    exec::upload_actions(conn, &actions).await?;
    for action in &actions {
        exec::execute(
            conn.execution(),
            &conn.instance,
            &action.digest,
            env.timeout,
        )
        .await?;
    }
    let mut rng = Rng::new(0x50a4, "soak");
    let blob_salt = data::fresh_salt();
    let stored: Vec<Bytes> = (0..PRESENT_BLOBS)
        .map(|_| {
            let len = rng.range(SMALL_BLOB.0, SMALL_BLOB.1);
            rng.salted(&blob_salt, len)
        })
        .collect();
    conn.upload(&stored).await?;
    let mut digests: Vec<re::Digest> = stored
        .iter()
        .take(FIND_MISSING_DIGESTS * 3 / 4)
        .map(|b| conn::digest(b))
        .collect();
    digests.extend(
        (0..FIND_MISSING_DIGESTS / 4)
            .map(|i| conn::digest(format!("{salt}-soak-absent-{i}").as_bytes())),
    );
    Ok(Fixture {
        conn: conn.clone(),
        cached: actions.into_iter().map(|a| a.digest).collect(),
        find_missing: re::FindMissingBlobsRequest {
            instance_name: conn.instance.clone(),
            blob_digests: digests,
            digest_function: 0,
        },
        stored,
        salt,
        env,
    })
}

/// Sends request `i` of kind `kind` and checks its answer.
async fn request(f: &Fixture, kind: Kind, i: u64) -> Result<()> {
    let instance = &f.conn.instance;
    match kind {
        Kind::ExecCached => {
            let digest = &f.cached[i as usize % f.cached.len()];
            let (response, _) =
                exec::execute(f.conn.execution(), instance, digest, f.env.timeout).await?;
            if !response.cached_result {
                return Err("a soak cache-hit Execute was not a cache hit".into());
            }
        }
        Kind::GetActionResult => {
            let digest = &f.cached[i as usize % f.cached.len()];
            ActionCacheClient::new(f.conn.channel())
                .get_action_result(re::GetActionResultRequest {
                    instance_name: instance.clone(),
                    action_digest: Some(digest.clone()),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("GetActionResult: {e}"))?;
        }
        Kind::FindMissing => {
            let missing = f
                .conn
                .cas()
                .find_missing_blobs(f.find_missing.clone())
                .await
                .map_err(|e| format!("FindMissingBlobs: {e}"))?
                .into_inner()
                .missing_blob_digests;
            if missing.len() != FIND_MISSING_DIGESTS / 4 {
                return Err(format!(
                    "FindMissingBlobs reported {} missing, expected {}",
                    missing.len(),
                    FIND_MISSING_DIGESTS / 4
                )
                .into());
            }
        }
        Kind::BatchUpdate => {
            let mut blobs: Vec<Bytes> = (1..BATCH_BLOBS)
                .map(|k| f.stored[(i as usize + k) % f.stored.len()].clone())
                .collect();
            blobs.push(Bytes::from(format!("{}-soak-new-{i}", f.salt)));
            let (requests, _) = f.conn.pack(&blobs);
            f.conn.send_batches(requests, 1).await?;
        }
        Kind::ExecUncached => {
            let root = exec::empty_root();
            let action = exec::true_action(&f.env, format!("{}-soak-uncached-{i}", f.salt), &root);
            exec::upload_actions(&f.conn, std::slice::from_ref(&action)).await?;
            let (response, _) =
                exec::execute(f.conn.execution(), instance, &action.digest, f.env.timeout).await?;
            if response.cached_result {
                return Err("a new soak action was answered from the cache".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hundred_requests_hold_the_mix() {
        let mut counts = BTreeMap::new();
        for i in 0..100 {
            *counts.entry(Kind::of(i)).or_insert(0u64) += 1;
        }
        for (kind, share) in MIX {
            assert_eq!(counts[&kind], share, "{}", kind.name());
        }
    }
}
