//! The recent past, for people: every finished execution and every cache hit, with what the
//! client said about it (RequestMetadata), newest last. The web UI and `rexd action` read
//! it; nothing on a request's path waits for it beyond one short lock.
//!
//! It is memory only and bounded three ways: records by count and by bytes (the oldest go
//! first), and invocation summaries by count (the least recently seen go first).

mod record;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prost::Message;

use crate::digest::Digest;
use crate::proto::remote_execution::{ActionResult, ExecuteResponse, RequestMetadata};

pub use record::{ClientInfo, Filter, InvocationStats, Outcome, OutcomeKind, Record};

/// The tool name `rexd action` sends: its own lookups are not what a person wants to see.
pub const INSPECTOR_TOOL: &str = "rexd-action";

/// How much the history may hold.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub max_actions: usize,
    pub max_bytes: u64,
    pub max_invocations: usize,
}

impl HistoryLimits {
    pub fn from_config(ui: &crate::config::UiConfig) -> Self {
        HistoryLimits {
            max_actions: ui.max_actions.max(1),
            max_bytes: ui.max_history_bytes.as_u64(),
            max_invocations: ui.max_invocations.max(1),
        }
    }
}

/// The shared history; cheap to clone.
#[derive(Clone)]
pub struct History {
    // A std Mutex: deque and map steps only, never held across an await.
    state: Arc<Mutex<State>>,
    limits: HistoryLimits,
}

struct State {
    /// Oldest first; sequence numbers are consecutive, so a record's index is arithmetic.
    records: VecDeque<Arc<Record>>,
    bytes: u64,
    next_seq: u64,
    /// The newest record of each retained action digest.
    latest: HashMap<Digest, u64>,
    invocations: lru::LruCache<String, InvocationStats>,
    /// Since start, not only what is retained.
    totals: Totals,
}

/// Counts since the server started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub cache_hits: u64,
    pub executed: u64,
    pub failed: u64,
    /// GetActionResult calls that found nothing.
    pub lookup_misses: u64,
}

impl History {
    pub fn new(limits: HistoryLimits) -> Self {
        let invocations = NonZeroUsize::new(limits.max_invocations).unwrap_or(NonZeroUsize::MIN);
        History {
            state: Arc::new(Mutex::new(State {
                records: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                latest: HashMap::new(),
                invocations: lru::LruCache::new(invocations),
                totals: Totals::default(),
            })),
            limits,
        }
    }

    /// A cache hit, from GetActionResult or from an Execute the cache answered.
    pub fn record_hit(
        &self,
        instance: &str,
        action_digest: Digest,
        metadata: Option<&RequestMetadata>,
        result: &ActionResult,
    ) {
        let tool = metadata.and_then(|m| m.tool_details.as_ref());
        if tool.is_some_and(|t| t.tool_name == INSPECTOR_TOOL) {
            return;
        }
        self.push(
            instance,
            action_digest,
            metadata,
            Outcome::CacheHit,
            None,
            Some(result.clone()),
        );
    }

    /// An operation that finished, however it ended.
    pub fn record_execution(
        &self,
        instance: &str,
        action_digest: Digest,
        metadata: Option<&RequestMetadata>,
        operation: &str,
        response: &ExecuteResponse,
    ) {
        let outcome = Outcome::of(response);
        self.push(
            instance,
            action_digest,
            metadata,
            outcome,
            Some(operation.to_string()),
            response.result.clone(),
        );
    }

    fn push(
        &self,
        instance: &str,
        action_digest: Digest,
        metadata: Option<&RequestMetadata>,
        outcome: Outcome,
        operation: Option<String>,
        result: Option<ActionResult>,
    ) {
        let client = metadata.map(ClientInfo::from_proto).unwrap_or_default();
        let result_bytes = result.as_ref().map_or(0, |r| r.encoded_len() as u64);
        let mut record = Record {
            seq: 0,
            at: SystemTime::now(),
            instance: instance.to_string(),
            action_digest,
            client,
            outcome,
            operation,
            result,
            bytes: 0,
        };
        record.bytes = record.measure(result_bytes);
        let mut state = self.state.lock().unwrap();
        record.seq = state.next_seq;
        state.next_seq += 1;
        let (seq, record) = (record.seq, Arc::new(record));
        state.count(&record, self.limits.max_invocations);
        state.bytes += record.cost();
        state.latest.insert(action_digest, seq);
        state.records.push_back(record);
        state.trim(&self.limits);
    }

    /// An action-cache lookup that found nothing (counted, not recorded).
    pub fn record_miss(&self) {
        self.state.lock().unwrap().totals.lookup_misses += 1;
    }

    /// Up to `limit` records that pass `filter`, newest first.
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Arc<Record>> {
        self.recent_where(filter, limit, |_| true)
    }

    /// Up to `limit` records that pass `filter` and `visible`, newest first.
    pub fn recent_where(
        &self,
        filter: &Filter,
        limit: usize,
        visible: impl Fn(&Record) -> bool,
    ) -> Vec<Arc<Record>> {
        let state = self.state.lock().unwrap();
        state
            .records
            .iter()
            .rev()
            .filter(|r| filter.admits(r) && visible(r))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The record numbered `seq`, while it is retained.
    pub fn get(&self, seq: u64) -> Option<Arc<Record>> {
        let state = self.state.lock().unwrap();
        let first = state.records.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        state.records.get(index).cloned()
    }

    /// The newest record of `digest`, while one is retained.
    pub fn latest(&self, digest: &Digest) -> Option<Arc<Record>> {
        let seq = *self.state.lock().unwrap().latest.get(digest)?;
        self.get(seq)
    }

    /// Executions older than `record`, newest first, at most `limit` of them: the
    /// candidates for explaining why it missed the cache.
    pub fn executed_before(&self, record: &Record, limit: usize) -> Vec<Arc<Record>> {
        let state = self.state.lock().unwrap();
        state
            .records
            .iter()
            .rev()
            .filter(|r| r.seq < record.seq && r.outcome.kind() != OutcomeKind::CacheHit)
            .filter(|r| r.action_digest != record.action_digest)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The summarised invocations, most recently seen first.
    pub fn invocations(&self) -> Vec<(String, InvocationStats)> {
        let state = self.state.lock().unwrap();
        state
            .invocations
            .iter()
            .map(|(id, stats)| (id.clone(), stats.clone()))
            .collect()
    }

    pub fn totals(&self) -> Totals {
        self.state.lock().unwrap().totals
    }

    /// Records retained and the bytes they hold.
    pub fn size(&self) -> (usize, u64) {
        let state = self.state.lock().unwrap();
        (state.records.len(), state.bytes)
    }
}

impl State {
    fn count(&mut self, record: &Record, max_invocations: usize) {
        let (hit, failed) = (
            record.outcome.kind() == OutcomeKind::CacheHit,
            record.outcome.kind() != OutcomeKind::CacheHit
                && record.outcome.kind() != OutcomeKind::Success,
        );
        if hit {
            self.totals.cache_hits += 1;
        } else {
            self.totals.executed += 1;
        }
        self.totals.failed += u64::from(failed);
        let id = &record.client.invocation;
        if id.is_empty() {
            return;
        }
        if self.invocations.len() >= max_invocations && !self.invocations.contains(id) {
            self.invocations.pop_lru();
        }
        let stats = self
            .invocations
            .get_or_insert_mut(id.clone(), || InvocationStats::new(record));
        stats.add(record);
    }

    fn trim(&mut self, limits: &HistoryLimits) {
        while self.records.len() > limits.max_actions
            || (self.bytes > limits.max_bytes && self.records.len() > 1)
        {
            let oldest = self.records.pop_front().expect("not empty");
            self.bytes -= oldest.cost();
            if self.latest.get(&oldest.action_digest) == Some(&oldest.seq) {
                self.latest.remove(&oldest.action_digest);
            }
        }
    }
}

#[cfg(test)]
mod tests;
