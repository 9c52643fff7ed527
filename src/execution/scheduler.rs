//! The action queue: priority order (lower `ExecutionPolicy.priority` first, FIFO within a
//! priority), merging of identical in-flight actions, platform matching and a bounded length.
//! Every step is O(log n) in the queue's length. The merge map holds only queued and running
//! actions, so it is bounded by `max_queued` plus the workers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::digest::Digest;
use crate::error::Error;
use crate::execution::operations::OperationState;
use crate::execution::registry::Operations;
use crate::execution::spec::ActionSpec;
use crate::proto::remote_execution::RequestMetadata;

/// A scheduled action and the operation that reports on it.
pub struct Job {
    pub spec: ActionSpec,
    pub op: Arc<OperationState>,
    pub queued_at: SystemTime,
    /// Its place in the queue, kept so a job a bot lost goes back where it was.
    key: QueueKey,
    /// How often a bot lost it (its session expired while it held the lease).
    pub lost: AtomicU32,
}

/// Queue order: the lowest `ExecutionPolicy.priority` value first, then the oldest.
type QueueKey = (i32, u64);

#[derive(Default)]
struct State {
    queue: BTreeMap<QueueKey, Arc<Job>>,
    /// Where each queued operation sits in `queue`, by operation name, so a cancel removes
    /// it in O(log n).
    queued_keys: HashMap<String, QueueKey>,
    seq: u64,
    /// Cacheable actions queued or running, by (instance, action digest), for merging.
    in_flight: HashMap<(String, Digest), Arc<OperationState>>,
    running: usize,
    /// Set at shutdown: no new actions are accepted.
    closed: bool,
}

/// Hands queued actions to workers.
pub struct Scheduler {
    // A std Mutex: queue operations only, never held across an await.
    state: Mutex<State>,
    available: Notify,
    max_queued: usize,
    platform: BTreeMap<String, String>,
    operations: Operations,
}

impl Scheduler {
    pub fn new(
        operations: Operations,
        platform: BTreeMap<String, String>,
        max_queued: usize,
    ) -> Self {
        Scheduler {
            state: Mutex::default(),
            available: Notify::new(),
            max_queued,
            platform,
            operations,
        }
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    /// The platform properties the workers offer.
    pub fn platform(&self) -> &BTreeMap<String, String> {
        &self.platform
    }

    /// Queues an action, or joins the identical one already queued or running.
    pub fn submit(
        &self,
        spec: ActionSpec,
        priority: i32,
        request_metadata: Option<RequestMetadata>,
    ) -> Result<Arc<OperationState>, Error> {
        self.check_platform(&spec.platform)?;
        let key = (spec.instance.clone(), spec.action_digest);
        let mut state = self.state.lock().unwrap();
        if state.closed {
            return Err(Error::ShuttingDown(
                "the server is shutting down and accepts no new actions; retry on another \
                 server or after the restart"
                    .into(),
            ));
        }
        if spec.cacheable()
            && let Some(op) = state.in_flight.get(&key)
            && !op.is_done()
            // A cancelled run stays in flight until its worker has killed it; joining it
            // would hand this caller a CANCELLED it never asked for.
            && !op.cancel.is_cancelled()
        {
            tracing::info!(operation = %op.name, action = %spec.action_digest, "merged with an identical in-flight action");
            return Ok(op.clone());
        }
        if state.queue.len() >= self.max_queued {
            return Err(Error::OverLimit(format!(
                "the execution queue is full ({} actions waiting); retry later",
                state.queue.len()
            )));
        }
        let op = self
            .operations
            .create(&spec.instance, spec.action_digest, request_metadata);
        if spec.cacheable() {
            state.in_flight.insert(key, op.clone());
        }
        tracing::info!(operation = %op.name, action = %spec.action_digest, priority, "queued");
        state.seq += 1;
        let key = (priority, state.seq);
        state.queued_keys.insert(op.name.clone(), key);
        state.queue.insert(
            key,
            Arc::new(Job {
                spec,
                op: op.clone(),
                queued_at: SystemTime::now(),
                key,
                lost: AtomicU32::new(0),
            }),
        );
        drop(state);
        self.available.notify_one();
        Ok(op)
    }

    fn check_platform(&self, wanted: &BTreeMap<String, String>) -> Result<(), Error> {
        for (name, value) in wanted {
            if crate::execution::sandbox::SANDBOX_PROPERTIES.contains(&name.as_str()) {
                continue; // Checked by the sandbox against the instance's configuration.
            }
            match self.platform.get(name) {
                Some(offered) if offered == value => {}
                Some(offered) => {
                    return Err(Error::Unsatisfiable(format!(
                        "no worker offers platform property {name}={value:?} (workers offer {name}={offered:?})"
                    )));
                }
                None => {
                    return Err(Error::Unsatisfiable(format!(
                        "no worker offers platform property {name:?}; offered: {}",
                        self.platform.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Waits for the next action to run.
    pub async fn next(&self) -> Arc<Job> {
        loop {
            let notified = self.available.notified();
            if let Some(job) = self.try_next() {
                return job;
            }
            notified.await;
        }
    }

    /// The next action to run, if one is waiting. Every executor offers the server's
    /// platform (a bot must, to join), so the queue's head suits whoever asks.
    pub fn try_next(&self) -> Option<Arc<Job>> {
        let mut state = self.state.lock().unwrap();
        let (_, job) = state.queue.pop_first()?;
        state.queued_keys.remove(&job.op.name);
        state.running += 1;
        let more = !state.queue.is_empty();
        drop(state);
        if more {
            self.available.notify_one();
        }
        Some(job)
    }

    /// Waits until an action is waiting or `deadline` passes; for a bot's long poll, which
    /// then takes it with [`Scheduler::try_next`].
    pub async fn wait_for_work(&self, deadline: tokio::time::Instant) {
        let notified = self.available.notified();
        if self.queued() > 0 {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// Puts back a running job its executor lost (a bot that stopped reporting), ahead of
    /// those queued after it. `false` if it is done or the server is shutting down: it is
    /// then finished, and its operation is the caller's to complete.
    pub fn requeue(&self, job: Arc<Job>) -> bool {
        let mut state = self.state.lock().unwrap();
        if state.closed || job.op.is_done() {
            drop(state);
            self.finished(&job);
            return false;
        }
        state.running -= 1;
        state.queued_keys.insert(job.op.name.clone(), job.key);
        state.queue.insert(job.key, job);
        drop(state);
        self.available.notify_one();
        true
    }

    /// Called by a worker when it is done with a job, whatever the outcome.
    pub fn finished(&self, job: &Job) {
        let mut state = self.state.lock().unwrap();
        state.running -= 1;
        let key = (job.spec.instance.clone(), job.spec.action_digest);
        if state
            .in_flight
            .get(&key)
            .is_some_and(|op| Arc::ptr_eq(op, &job.op))
        {
            state.in_flight.remove(&key);
        }
    }

    /// Removes a queued operation; `true` if it was still waiting (and is now gone).
    pub fn dequeue(&self, op: &Arc<OperationState>) -> bool {
        let mut state = self.state.lock().unwrap();
        let removed = match state.queued_keys.remove(&op.name) {
            Some(key) => state.queue.remove(&key).is_some(),
            None => false,
        };
        if removed {
            let key = (op.instance.clone(), op.action_digest);
            if state
                .in_flight
                .get(&key)
                .is_some_and(|o| Arc::ptr_eq(o, op))
            {
                state.in_flight.remove(&key);
            }
        }
        removed
    }

    /// Stops accepting actions and returns the operations of those still waiting.
    pub fn close(&self) -> Vec<Arc<OperationState>> {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        state.queued_keys.clear();
        let drained: Vec<_> = std::mem::take(&mut state.queue)
            .into_values()
            .map(|job| job.op.clone())
            .collect();
        for op in &drained {
            state
                .in_flight
                .remove(&(op.instance.clone(), op.action_digest));
        }
        drained
    }

    /// Actions waiting for a worker.
    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    /// Actions being run by a worker.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running
    }
}
