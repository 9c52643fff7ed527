//! The `--workers` report: how a workload's actions spread over the executors, by the
//! `worker` of their ExecutedActionMetadata. It also gives the workers' local CAS cache hit
//! rate, read from the `/metrics` of each `rexd worker` named with `--worker-metrics`.

use std::collections::BTreeMap;

use rexd::proto::remote_execution as re;

use crate::Result;
use crate::json::Json;

/// Actions per executor, as the server reported them.
#[derive(Default)]
pub struct Tally {
    by_worker: BTreeMap<String, usize>,
}

impl Tally {
    pub fn add(&mut self, response: &re::ExecuteResponse) {
        let worker = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
            .map(|m| m.worker.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "(unnamed)".into());
        *self.by_worker.entry(worker).or_default() += 1;
    }
}

/// The counters of the workers' local CAS caches, summed over the workers: input files
/// found there, and input files fetched from the server.
#[derive(Clone, Copy, Default)]
pub struct CacheCounters {
    hits: f64,
    fetched: f64,
}

/// Reads `rexd_worker_cache_hits_total` and `rexd_worker_cache_misses_total` from each
/// worker's `/metrics` (`http://HOST:PORT/metrics`).
pub async fn scrape(urls: &[String]) -> Result<CacheCounters> {
    let client = reqwest::Client::new();
    let mut sum = CacheCounters::default();
    for url in urls {
        let text = client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("reading the worker metrics at {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("reading the worker metrics at {url}: {e}"))?;
        sum.hits += counter(&text, "rexd_worker_cache_hits_total");
        sum.fetched += counter(&text, "rexd_worker_cache_misses_total");
    }
    Ok(sum)
}

/// The sum of every series of the counter `name` in Prometheus text.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What a workload's `--workers` report says, between two scrapes of the workers' metrics.
pub fn report(
    tally: &Tally,
    before: Option<CacheCounters>,
    after: Option<CacheCounters>,
) -> (String, Json) {
    let spread: Vec<String> = tally
        .by_worker
        .iter()
        .map(|(w, n)| format!("{w} {n}"))
        .collect();
    let mut per_worker = Json::obj();
    for (w, n) in &tally.by_worker {
        per_worker.set(w.clone(), *n);
    }
    let mut json = Json::obj()
        .with("workers", tally.by_worker.len())
        .with("actions_per_worker", per_worker);
    let mut text = format!("; actions per worker: {}", spread.join(", "));
    if let (Some(b), Some(a)) = (before, after) {
        let (hits, fetched) = (a.hits - b.hits, a.fetched - b.fetched);
        let looked_up = hits + fetched;
        let rate = if looked_up > 0.0 {
            hits / looked_up
        } else {
            0.0
        };
        text += &if looked_up > 0.0 {
            format!(
                "; worker cache: {hits:.0} input files found, {fetched:.0} fetched ({:.1}% hits)",
                rate * 100.0
            )
        } else {
            "; worker cache: the actions had no input files".to_string()
        };
        json.set("worker_cache_hits", hits);
        json.set("worker_files_fetched", fetched);
        json.set("worker_cache_hit_rate", rate);
    }
    (text, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_their_series() {
        let text = "# TYPE rexd_worker_cache_hits_total counter\n\
                    rexd_worker_cache_hits_total{bot=\"a\"} 3\n\
                    rexd_worker_cache_hits_total{bot=\"b\"} 4\n\
                    rexd_worker_cache_hits_total_other 100\n";
        assert_eq!(counter(text, "rexd_worker_cache_hits_total"), 7.0);
        assert_eq!(counter(text, "rexd_worker_cache_misses_total"), 0.0);
    }

    #[test]
    fn the_report_names_each_worker_and_the_hit_rate() {
        let mut tally = Tally::default();
        for w in ["a", "b", "a"] {
            tally.add(&re::ExecuteResponse {
                result: Some(re::ActionResult {
                    execution_metadata: Some(re::ExecutedActionMetadata {
                        worker: w.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let before = CacheCounters::default();
        let after = CacheCounters {
            hits: 3.0,
            fetched: 1.0,
        };
        let (text, _) = report(&tally, Some(before), Some(after));
        assert!(text.contains("a 2, b 1"), "{text}");
        assert!(text.contains("75.0% hits"), "{text}");
    }
}
