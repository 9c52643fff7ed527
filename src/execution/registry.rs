//! The registry of operations: every live one (queued or running) and, within bounds of
//! age, count and bytes, the finished ones, so sustained traffic cannot grow the server.
//! Every step is O(log n) in the number retained.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::execution::operations::{OperationState, Progress};
use crate::proto::remote_execution::{ExecuteResponse, RequestMetadata};

/// Bounds on what finished operations may hold; live ones are bounded by the scheduler's
/// queue and the workers.
#[derive(Clone, Copy, Debug)]
pub struct RetentionLimits {
    /// How long a finished operation stays queryable.
    pub ttl: Duration,
    /// Most finished operations kept; the oldest go first.
    pub max_count: usize,
    /// Most bytes (responses, metadata and names) finished operations may hold.
    pub max_bytes: u64,
}

/// Fixed cost of a retained operation beyond its encoded response and metadata: the
/// struct, the watch channel, the map and queue entries.
const OPERATION_OVERHEAD: u64 = 512;

/// All known operations by name: the live ones (queued or running) and, within the
/// [`RetentionLimits`], the finished ones. Every step is O(log n) in the number retained.
#[derive(Clone)]
pub struct Operations {
    registry: Arc<Registry>,
}

pub(super) struct Registry {
    // A std Mutex: map and queue operations only, never held across an await.
    state: Mutex<RegistryState>,
    limits: RetentionLimits,
    /// Where finished operations are remembered for people (the web UI).
    history: Option<crate::history::History>,
}

#[derive(Default)]
struct RegistryState {
    /// Ordered by name, so that a page of ListOperations is a range scan.
    by_name: BTreeMap<String, Arc<OperationState>>,
    /// Finished operations, oldest completion first.
    finished: VecDeque<Finished>,
    /// Sum of `Finished::bytes` over `finished`.
    finished_bytes: u64,
}

struct Finished {
    name: String,
    at: Instant,
    bytes: u64,
}

impl RegistryState {
    /// Forgets the oldest finished operations until the bounds hold and none is older than
    /// the TTL.
    fn trim(&mut self, limits: &RetentionLimits, now: Instant) {
        while let Some(oldest) = self.finished.front() {
            let over = self.finished.len() > limits.max_count
                || self.finished_bytes > limits.max_bytes
                || now.duration_since(oldest.at) >= limits.ttl;
            if !over {
                break;
            }
            let oldest = self.finished.pop_front().expect("front exists");
            self.finished_bytes -= oldest.bytes;
            self.by_name.remove(&oldest.name);
        }
    }
}

impl Registry {
    pub(super) fn finished(&self, op: &OperationState, response: &ExecuteResponse) {
        let bytes = OPERATION_OVERHEAD
            + op.name.len() as u64
            + response.encoded_len() as u64
            + op.request_metadata
                .as_ref()
                .map_or(0, |m| m.encoded_len() as u64);
        let now = Instant::now();
        if let Some(history) = &self.history {
            history.record_execution(
                &op.instance,
                op.action_digest,
                op.request_metadata.as_ref(),
                &op.name,
                response,
            );
        }
        let mut state = self.state.lock().unwrap();
        if !state.by_name.contains_key(&op.name) {
            return; // Deleted while running.
        }
        state.finished.push_back(Finished {
            name: op.name.clone(),
            at: now,
            bytes,
        });
        state.finished_bytes += bytes;
        state.trim(&self.limits, now);
    }
}

/// The name prefix of `instance`'s operations: `{instance}/operations/`, or `operations/`
/// for the default instance.
pub fn name_prefix(instance: &str) -> String {
    if instance.is_empty() {
        "operations/".to_string()
    } else {
        format!("{instance}/operations/")
    }
}

impl Operations {
    pub fn new(limits: RetentionLimits) -> Self {
        Self::recorded(limits, None)
    }

    /// A registry that also tells `history` of every operation that finishes.
    pub fn recorded(limits: RetentionLimits, history: Option<crate::history::History>) -> Self {
        Operations {
            registry: Arc::new(Registry {
                state: Mutex::default(),
                limits,
                history,
            }),
        }
    }

    /// The history finished operations are told to, if any.
    pub fn history(&self) -> Option<&crate::history::History> {
        self.registry.history.as_ref()
    }

    fn new_state(
        registry: Weak<Registry>,
        instance: &str,
        action_digest: Digest,
        request_metadata: Option<RequestMetadata>,
    ) -> Arc<OperationState> {
        let (progress, _) = watch::channel(Progress::Queued);
        Arc::new(OperationState {
            name: format!("{}{}", name_prefix(instance), uuid::Uuid::new_v4()),
            instance: instance.to_string(),
            action_digest,
            request_metadata,
            progress,
            cancel: CancellationToken::new(),
            registry,
            created: std::time::SystemTime::now(),
            started: std::sync::OnceLock::new(),
        })
    }

    /// Registers a new queued operation named `{instance}/operations/{uuid}` (or
    /// `operations/{uuid}` for the default instance).
    pub fn create(
        &self,
        instance: &str,
        action_digest: Digest,
        request_metadata: Option<RequestMetadata>,
    ) -> Arc<OperationState> {
        let op = Self::new_state(
            Arc::downgrade(&self.registry),
            instance,
            action_digest,
            request_metadata,
        );
        let mut state = self.registry.state.lock().unwrap();
        state.by_name.insert(op.name.clone(), op.clone());
        op
    }

    /// An operation that is complete from the start and never registered: an action-cache
    /// hit, the most common Execute, costs no retained state. Later lookups of its name
    /// get NOT_FOUND, which clients answer by executing again.
    pub fn completed(
        instance: &str,
        action_digest: Digest,
        response: ExecuteResponse,
    ) -> Arc<OperationState> {
        let op = Self::new_state(Weak::new(), instance, action_digest, None);
        op.complete(response);
        op
    }

    pub fn get(&self, name: &str) -> Option<Arc<OperationState>> {
        self.registry
            .state
            .lock()
            .unwrap()
            .by_name
            .get(name)
            .cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<OperationState>> {
        // A finished one's queue entry stays until it ages out; removing a missing name
        // then is a no-op.
        self.registry.state.lock().unwrap().by_name.remove(name)
    }

    /// Up to `limit` operations of `instance` whose names sort after `after` (from the
    /// start if empty), and whether more follow.
    pub fn page(
        &self,
        instance: &str,
        after: &str,
        limit: usize,
    ) -> (Vec<Arc<OperationState>>, bool) {
        let prefix = name_prefix(instance);
        let state = self.registry.state.lock().unwrap();
        let start = if after.is_empty() {
            Bound::Included(prefix.as_str())
        } else {
            Bound::Excluded(after)
        };
        let mut page: Vec<_> = state
            .by_name
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(_, op)| op.instance == instance)
            .map(|(_, op)| op.clone())
            .take(limit.saturating_add(1))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Every operation of `instance`, ordered by name.
    pub fn list(&self, instance: &str) -> Vec<Arc<OperationState>> {
        self.page(instance, "", usize::MAX - 1).0
    }

    /// Every operation, of every instance.
    pub fn list_all(&self) -> Vec<Arc<OperationState>> {
        let state = self.registry.state.lock().unwrap();
        state.by_name.values().cloned().collect()
    }

    /// The operations not yet finished (queued or running), without copying the finished.
    pub fn live(&self) -> Vec<Arc<OperationState>> {
        let state = self.registry.state.lock().unwrap();
        state
            .by_name
            .values()
            .filter(|op| !op.is_done())
            .cloned()
            .collect()
    }

    /// Operations retained, live and finished.
    pub fn len(&self) -> usize {
        self.registry.state.lock().unwrap().by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finished operations retained.
    pub fn finished_len(&self) -> usize {
        self.registry.state.lock().unwrap().finished.len()
    }

    /// Forgets operations that finished longer than the TTL ago.
    pub fn expire(&self) {
        let mut state = self.registry.state.lock().unwrap();
        state.trim(&self.registry.limits, Instant::now());
    }

    /// Runs [`Operations::expire`] periodically until the registry is dropped.
    pub fn spawn_expiry(&self) {
        let weak = Arc::downgrade(&self.registry);
        let period = (self.registry.limits.ttl / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                Operations { registry }.expire();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn limits(ttl: Duration, max_count: usize, max_bytes: u64) -> RetentionLimits {
        RetentionLimits {
            ttl,
            max_count,
            max_bytes,
        }
    }

    fn digest() -> Digest {
        Digest::of(DigestFunction::Sha256, b"a")
    }

    #[test]
    fn lifecycle() {
        let ops = Operations::new(limits(Duration::from_secs(3600), 10, u64::MAX));
        let op = ops.create("inst", digest(), None);
        assert!(op.name.starts_with("inst/operations/"));
        assert!(!op.to_proto().done);
        op.set_executing();
        assert!(op.complete(ExecuteResponse::default()));
        assert!(
            !op.complete(ExecuteResponse::default()),
            "first completion wins"
        );
        assert!(op.to_proto().done);
        assert_eq!(ops.list("inst").len(), 1);
        assert!(ops.list("").is_empty());
        assert_eq!(
            ops.finished_len(),
            1,
            "a second completion is not counted twice"
        );
    }

    #[test]
    fn a_zero_ttl_forgets_at_completion() {
        let ops = Operations::new(limits(Duration::ZERO, 10, u64::MAX));
        let op = ops.create("", digest(), None);
        op.complete(ExecuteResponse::default());
        ops.expire();
        assert!(ops.get(&op.name).is_none());
    }

    #[test]
    fn finished_operations_stay_within_the_count_and_live_ones_stay() {
        let ops = Operations::new(limits(Duration::from_secs(3600), 100, u64::MAX));
        let live: Vec<_> = (0..5).map(|_| ops.create("", digest(), None)).collect();
        let mut last = None;
        for _ in 0..10_000 {
            let op = ops.create("", digest(), None);
            op.complete(ExecuteResponse::default());
            last = Some(op);
        }
        assert_eq!(ops.finished_len(), 100);
        assert_eq!(ops.len(), 105);
        assert!(live.iter().all(|op| ops.get(&op.name).is_some()));
        assert!(ops.get(&last.unwrap().name).is_some(), "the newest stays");
    }

    #[test]
    fn finished_operations_stay_within_the_bytes() {
        let max_bytes = 64 * 1024;
        let ops = Operations::new(limits(Duration::from_secs(3600), usize::MAX, max_bytes));
        let response = ExecuteResponse {
            message: "x".repeat(4000),
            ..Default::default()
        };
        for _ in 0..1000 {
            ops.create("", digest(), None).complete(response.clone());
        }
        let kept = ops.finished_len() as u64;
        assert!(kept > 0 && kept * 4000 <= max_bytes, "{kept} kept");
        assert_eq!(ops.len() as u64, kept);
    }

    #[test]
    fn a_cache_hit_operation_is_done_and_not_retained() {
        let ops = Operations::new(limits(Duration::from_secs(3600), 10, u64::MAX));
        let op = Operations::completed("inst", digest(), ExecuteResponse::default());
        assert!(op.to_proto().done);
        assert!(op.name.starts_with("inst/operations/"));
        assert!(ops.is_empty());
    }

    #[test]
    fn pages_walk_one_instance_in_name_order() {
        let ops = Operations::new(limits(Duration::from_secs(3600), 1000, u64::MAX));
        for _ in 0..25 {
            ops.create("a", digest(), None);
            ops.create("", digest(), None);
            ops.create("b", digest(), None);
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let (page, more) = ops.page("a", &after, 10);
            assert!(page.iter().all(|op| op.instance == "a"));
            seen.extend(page.iter().map(|op| op.name.clone()));
            after = seen.last().cloned().unwrap_or_default();
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ops.list("").len(), 25);
    }
}
