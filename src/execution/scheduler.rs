//! The action queue: priority order (lower `ExecutionPolicy.priority` first, FIFO within a
//! priority), merging of identical in-flight actions, platform matching against the worker
//! pools and a bounded length. Each pool has its own queue, and an action waits in every pool
//! able to run it until one of them hands it out. Every step is O(p log n), for p pools and n
//! queued actions. The merge map holds only queued and running actions, so it is bounded by
//! `max_queued` plus the workers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::digest::Digest;
use crate::error::Error;
use crate::execution::operations::OperationState;
use crate::execution::pools::{PoolId, PoolSet, Pools};
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
    /// The pools able to run it.
    pub pools: PoolSet,
}

/// Queue order: the lowest `ExecutionPolicy.priority` value first, then the oldest.
type QueueKey = (i32, u64);

#[derive(Default)]
struct State {
    /// One queue per pool, by [`PoolId`].
    queues: Vec<BTreeMap<QueueKey, Arc<Job>>>,
    /// Where each queued operation sits in `queues`, by operation name, so a cancel removes
    /// it in O(p log n).
    queued_keys: HashMap<String, (QueueKey, PoolSet)>,
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
    /// Wakes a waiting executor of each pool.
    available: Vec<Notify>,
    max_queued: usize,
    pools: Pools,
    operations: Operations,
}

impl Scheduler {
    pub fn new(operations: Operations, pools: Pools, max_queued: usize) -> Self {
        Scheduler {
            state: Mutex::new(State {
                queues: vec![BTreeMap::new(); pools.len()],
                ..State::default()
            }),
            available: (0..pools.len()).map(|_| Notify::new()).collect(),
            max_queued,
            pools,
            operations,
        }
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    /// The worker pools and what each offers.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Queues an action, or joins the identical one already queued or running.
    pub fn submit(
        &self,
        spec: ActionSpec,
        priority: i32,
        request_metadata: Option<RequestMetadata>,
    ) -> Result<Arc<OperationState>, Error> {
        let pools = self.pools.for_action(&spec.platform)?;
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
        if state.queued_keys.len() >= self.max_queued {
            return Err(Error::OverLimit(format!(
                "the execution queue is full ({} actions waiting); retry later",
                state.queued_keys.len()
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
        let job = Arc::new(Job {
            spec,
            op: op.clone(),
            queued_at: SystemTime::now(),
            key,
            lost: AtomicU32::new(0),
            pools,
        });
        state.enqueue(job);
        drop(state);
        self.notify(pools);
        Ok(op)
    }

    fn notify(&self, pools: PoolSet) {
        for pool in pools.iter() {
            self.available[pool].notify_one();
        }
    }

    /// Waits for the next action an executor of `pool` may run.
    pub async fn next(&self, pool: PoolId) -> Arc<Job> {
        loop {
            let notified = self.available[pool].notified();
            if let Some(job) = self.try_next(pool) {
                return job;
            }
            notified.await;
        }
    }

    /// The next action for an executor of `pool`, if one is waiting: the head of the pool's
    /// queue, taken out of the other pools' queues too.
    pub fn try_next(&self, pool: PoolId) -> Option<Arc<Job>> {
        let mut state = self.state.lock().unwrap();
        let (_, job) = state.queues[pool].pop_first()?;
        state.unqueue(&job.op.name);
        state.running += 1;
        let more = !state.queues[pool].is_empty();
        drop(state);
        if more {
            self.available[pool].notify_one();
        }
        Some(job)
    }

    /// Waits until an action is waiting in `pool` or `deadline` passes; for a bot's long
    /// poll, which then takes it with [`Scheduler::try_next`].
    pub async fn wait_for_work(&self, pool: PoolId, deadline: tokio::time::Instant) {
        let notified = self.available[pool].notified();
        if !self.state.lock().unwrap().queues[pool].is_empty() {
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
        let pools = job.pools;
        state.enqueue(job);
        drop(state);
        self.notify(pools);
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
        let removed = state.unqueue(&op.name);
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
        let mut drained = Vec::new();
        let mut seen = HashSet::new();
        for queue in &mut state.queues {
            // A job waits in each of its pools; take it once.
            for job in std::mem::take(queue).into_values() {
                if seen.insert(job.op.name.clone()) {
                    drained.push(job.op.clone());
                }
            }
        }
        for op in &drained {
            state
                .in_flight
                .remove(&(op.instance.clone(), op.action_digest));
        }
        drained
    }

    /// Actions waiting for a worker.
    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().queued_keys.len()
    }

    /// Queued actions by `ExecutionPolicy.priority`, lowest (first to run) first.
    pub fn queued_by_priority(&self) -> BTreeMap<i32, usize> {
        let state = self.state.lock().unwrap();
        let mut counts = BTreeMap::new();
        for ((priority, _), _) in state.queued_keys.values() {
            *counts.entry(*priority).or_insert(0) += 1;
        }
        counts
    }

    /// Actions being run by a worker.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().running
    }
}

impl State {
    /// Puts a job in the queue of each pool able to run it.
    fn enqueue(&mut self, job: Arc<Job>) {
        self.queued_keys
            .insert(job.op.name.clone(), (job.key, job.pools));
        for pool in job.pools.iter() {
            self.queues[pool].insert(job.key, job.clone());
        }
    }

    /// Takes a queued job out of every pool's queue; `true` if it was queued.
    fn unqueue(&mut self, name: &str) -> bool {
        let Some((key, pools)) = self.queued_keys.remove(name) else {
            return false;
        };
        for pool in pools.iter() {
            self.queues[pool].remove(&key);
        }
        true
    }
}
