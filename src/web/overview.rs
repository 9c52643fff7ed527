//! The overview: what the server is doing now. Queue, running actions, workers, cache hit
//! ratio, transfer rates, disk use and recent errors; it refreshes itself every two seconds.

use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use axum::Extension;
use axum::extract::State;
use maud::{Markup, html};

use super::{WebState, layout};
use crate::auth::Caller;
use crate::execution::Progress;
use crate::history::{Filter, OutcomeKind};

/// Most running actions listed; the count shows them all.
const MAX_RUNNING_SHOWN: usize = 200;

/// CAS transfer rates, from the byte counters at successive renders.
#[derive(Default)]
pub struct Rates {
    last: Mutex<Option<Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    in_per_sec: f64,
    out_per_sec: f64,
}

impl Rates {
    /// Bytes per second in and out since the previous sample at least a second old.
    fn update(&self, bytes_in: u64, bytes_out: u64) -> (f64, f64) {
        let mut last = self.last.lock().unwrap();
        let now = Instant::now();
        let next = match *last {
            Some(s) if now.duration_since(s.at).as_secs_f64() < 1.0 => s,
            Some(s) => {
                let secs = now.duration_since(s.at).as_secs_f64();
                Sample {
                    at: now,
                    bytes_in,
                    bytes_out,
                    in_per_sec: bytes_in.saturating_sub(s.bytes_in) as f64 / secs,
                    out_per_sec: bytes_out.saturating_sub(s.bytes_out) as f64 / secs,
                }
            }
            None => Sample {
                at: now,
                bytes_in,
                bytes_out,
                in_per_sec: 0.0,
                out_per_sec: 0.0,
            },
        };
        *last = Some(next);
        (next.in_per_sec, next.out_per_sec)
    }
}

pub async fn page(State(state): State<WebState>, Extension(caller): Extension<Caller>) -> Markup {
    layout::page(
        "Overview",
        html! { div #live data-live { (live(&state, &caller)) } },
    )
}

fn card(label: &str, value: String) -> Markup {
    html! { div.card { div.muted { (label) } div.v { (value) } } }
}

fn live(state: &WebState, caller: &Caller) -> Markup {
    let ctx = &state.ctx;
    let history = &ctx.history;
    let totals = history.totals();
    let looked_up = totals.cache_hits + totals.executed;
    let hit_ratio = if looked_up == 0 {
        "-".to_string()
    } else {
        format!(
            "{:.1} %",
            100.0 * totals.cache_hits as f64 / looked_up as f64
        )
    };
    let stats = ctx.cas.stats().snapshot();
    let (in_rate, out_rate) = state.rates.update(stats.bytes_in, stats.bytes_out);
    let used = ctx.cas.index().total_bytes();
    let budget = ctx.settings.cas.max_size;
    let disk = if budget == 0 {
        format!("{} (no budget)", layout::bytes(used))
    } else {
        format!("{} of {}", layout::bytes(used), layout::bytes(budget))
    };
    let engine = ctx.execution.as_ref();
    let mut running: Vec<_> = engine
        .map(|e| e.operations().live())
        .unwrap_or_default()
        .into_iter()
        .filter(|op| matches!(op.progress(), Progress::Executing))
        .filter(|op| WebState::may_read(caller, &op.instance))
        .collect();
    running.sort_by_key(|op| op.created);
    let errors = history.recent_where(
        &Filter {
            outcome: Some(OutcomeKind::Error),
            ..Default::default()
        },
        10,
        |r| WebState::may_read(caller, &r.instance),
    );
    let now = SystemTime::now();
    html! {
        div.cards {
            (card("Queued", engine.map_or(0, |e| e.queued()).to_string()))
            (card("Running", running.len().to_string()))
            (card("Cache hit ratio", hit_ratio))
            (card("Lookups missed", totals.lookup_misses.to_string()))
            (card("Uploads", format!("{}/s", layout::bytes(in_rate as u64))))
            (card("Downloads", format!("{}/s", layout::bytes(out_rate as u64))))
            (card("CAS on disk", disk))
            (card("Blobs", ctx.cas.index().len().to_string()))
        }
        h2 { "Queue by priority" }
        @match engine.map(|e| e.queued_by_priority()) {
            None => p.muted { "Remote execution is off on this server." },
            Some(q) if q.is_empty() => p.muted { "Nothing is waiting." },
            Some(q) => table {
                tr { th { "Priority" } th { "Queued" } }
                @for (priority, count) in q { tr { td { (priority) } td { (count) } } }
            },
        }
        h2 { "Running" }
        @if running.is_empty() { p.muted { "Nothing is running." } } @else {
            table #running {
                tr { th { "Action" } th { "Mnemonic" } th { "Target" } th { "Worker" } th { "Elapsed" } }
                @for op in running.iter().take(MAX_RUNNING_SHOWN) {
                    @let m = op.request_metadata.clone().unwrap_or_default();
                    @let started = op.started();
                    tr {
                        td.mono { a href=(layout::action_href(&op.action_digest)) { (op.action_digest.to_string()) } }
                        td { (m.action_mnemonic) }
                        td { (m.target_id) }
                        td { (started.map(|s| s.0.as_str()).unwrap_or("")) }
                        td { (layout::duration(now.duration_since(started.map_or(op.created, |s| s.1)).unwrap_or_default())) }
                    }
                }
            }
        }
        h2 { "Workers" }
        @if let Some(e) = engine {
            table {
                tr { th { "Kind" } th { "Count" } th { "Busy" } }
                tr { td { "local slots" } td { (e.worker_count()) } td { (running.len().saturating_sub(e.bots().leases())) } }
                tr { td { "remote bots (sessions)" } td { (e.bots().sessions()) } td { (e.bots().leases()) " leases" } }
            }
        }
        h2 { "Recent errors" }
        @if errors.is_empty() { p.muted { "None retained." } } @else {
            table {
                tr { th { "When" } th { "Action" } th { "Error" } }
                @for r in &errors {
                    tr {
                        td { (layout::ago(r.at)) }
                        td.mono { a href=(layout::action_href(&r.action_digest)) { (r.action_digest.to_string()) } }
                        td.error { (r.outcome.describe()) }
                    }
                }
            }
        }
    }
}
