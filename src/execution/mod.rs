//! Remote execution: validated action specs, the scheduler queue, the operations registry
//! and the local workers that stage, run and collect actions. [`Engine`] is the one door
//! into all of it.

pub mod bots;
pub mod completion;
pub mod input_tree;
pub mod operations;
pub mod outputs;
pub mod pools;
pub mod registry;
pub mod runner;
pub mod sandbox;
pub mod scheduler;
pub mod server_log;
pub mod skeleton;
pub mod spawn;
pub mod spec;
pub mod stage;
pub mod warm;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ExecutionSettings, InstanceConfig, SandboxConfig};
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::remote_execution::RequestMetadata;
use crate::storage::TieredStore;

pub use operations::{OperationState, Progress};
pub use registry::Operations;
pub use scheduler::Scheduler;
pub use spec::{ActionSpec, SpecLimits};

/// The execution side of the server, and the only door into it: [`Engine::execute`],
/// [`Engine::wait`] and [`Engine::cancel`]. Work is handed to executors that ask the
/// scheduler for it; the local worker slots are the first kind (see [`worker`]).
pub struct Engine {
    scheduler: Arc<Scheduler>,
    limits: SpecLimits,
    sandbox: Arc<sandbox::Sandbox>,
    /// Input directories already read and validated.
    directories: input_tree::DirectoryCache,
    workers: worker::WorkerContext,
    worker_count: usize,
    /// Remote bots, the second kind of executor.
    bots: Arc<bots::BotFarm>,
}

/// An Execute call, validated by the adapter.
pub struct Submission {
    pub instance: InstanceConfig,
    pub action_digest: Digest,
    pub skip_cache_lookup: bool,
    /// `ExecutionPolicy.priority`: lower runs first.
    pub priority: i32,
    pub request_metadata: Option<RequestMetadata>,
}

impl Engine {
    /// Prepares the engine (blocking: creates directories). Workers start with [`Engine::start`].
    pub fn new(
        config: &ExecutionSettings,
        sandbox_config: &SandboxConfig,
        data_dir: &Path,
        store: TieredStore,
        history: Option<crate::history::History>,
    ) -> Result<Self, Error> {
        let cas = store.cas.clone();
        let operations = Operations::recorded(config.retention, history);
        let scheduler = Arc::new(Scheduler::new(
            operations,
            config.pools.clone(),
            config.max_queued,
        ));
        let slots = worker::Slots::open(
            cas.clone(),
            data_dir,
            sandbox_config,
            config.keep_failed_action_dirs,
        )?;
        let sandbox = slots.sandbox.clone();
        Ok(Engine {
            limits: config.limits,
            bots: Arc::new(bots::BotFarm::new(
                config.bots.clone(),
                scheduler.clone(),
                cas,
                store.clone(),
            )),
            workers: worker::WorkerContext {
                slots,
                store,
                scheduler: scheduler.clone(),
                pool: config.local_pool.unwrap_or_default(),
            },
            sandbox,
            directories: input_tree::DirectoryCache::new(config.directory_cache_bytes),
            worker_count: config.workers,
            scheduler,
        })
    }

    /// Answers an Execute: from the action cache when it holds a complete result (no
    /// operation is retained for that), else by queueing the action or joining the
    /// identical one in flight. The operation's updates are its [`OperationState::updates`].
    pub async fn execute(
        self: &Arc<Self>,
        submission: Submission,
    ) -> Result<Arc<OperationState>, Error> {
        let Submission {
            instance,
            action_digest,
            skip_cache_lookup,
            priority,
            request_metadata,
        } = submission;
        let name = instance.name.clone();
        if !skip_cache_lookup {
            if let Some(result) = self
                .workers
                .store
                .action_result(&name, &action_digest)
                .await?
            {
                if let Some(history) = self.operations().history() {
                    history.record_hit(&name, action_digest, request_metadata.as_ref(), &result);
                }
                let op = Operations::completed(
                    &name,
                    action_digest,
                    operations::execute_response(Some(result), true, None),
                );
                tracing::info!(operation = %op.name, action = %action_digest, "served from the action cache");
                return Ok(op);
            }
        }
        self.workers.store.prefetch_action(&action_digest).await?;
        let this = self.clone();
        let spec = blocking(move || {
            spec::load(
                &this.workers.slots.cas,
                &this.directories,
                &instance,
                &this.sandbox,
                action_digest,
                &this.limits,
            )
        })
        .await?;
        self.scheduler.submit(spec, priority, request_metadata)
    }

    /// The operation named `name`, to watch; NOT_FOUND once it is forgotten.
    pub fn wait(&self, name: &str) -> Result<Arc<OperationState>, Error> {
        self.operations()
            .get(name)
            .ok_or_else(|| Error::Absent(format!("no operation named {name:?}")))
    }

    /// Cancels `op`: a queued action is dropped from the queue, a running one is killed by
    /// its executor; either way every waiter sees CANCELLED.
    pub fn cancel(&self, op: &Arc<OperationState>, reason: &str) {
        if op.is_done() {
            return;
        }
        let dequeued = self.scheduler.dequeue(op);
        op.cancel.cancel();
        if dequeued {
            op.complete(operations::execute_response(
                None,
                false,
                Some(Error::Cancelled(reason.to_string())),
            ));
        }
        tracing::info!(operation = %op.name, action = %op.action_digest, dequeued, "cancelled");
    }

    pub fn operations(&self) -> &Operations {
        self.scheduler.operations()
    }

    /// The worker pools and what each offers.
    pub fn pools(&self) -> &pools::Pools {
        self.scheduler.pools()
    }

    /// The isolation mechanism the local workers use.
    pub fn sandbox_backend(&self) -> &sandbox::Backend {
        &self.sandbox.backend
    }

    /// Actions waiting for an executor.
    pub fn queued(&self) -> usize {
        self.scheduler.queued()
    }

    /// Queued actions by priority.
    pub fn queued_by_priority(&self) -> std::collections::BTreeMap<i32, usize> {
        self.scheduler.queued_by_priority()
    }

    /// Actions being run.
    pub fn running(&self) -> usize {
        self.scheduler.running()
    }

    /// Local worker slots.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// The remote bots' sessions and leases.
    pub fn bots(&self) -> &Arc<bots::BotFarm> {
        &self.bots
    }

    /// Graceful stop: accepts no new actions, fails queued ones at once, lets running ones
    /// finish for up to `grace`, then kills the rest. Every waiter of an action that did not
    /// finish sees UNAVAILABLE.
    pub async fn drain(&self, grace: Duration) {
        let unavailable = |what: &str| {
            operations::execute_response(
                None,
                false,
                Some(Error::ShuttingDown(format!(
                    "the server shut down {what}; retry the action"
                ))),
            )
        };
        for op in self.scheduler.close() {
            op.complete(unavailable("before the action started"));
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.scheduler.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut killed = 0;
        for op in self.operations().list_all() {
            if op.complete(unavailable("while the action was running")) {
                op.cancel.cancel();
                killed += 1;
            }
        }
        tracing::info!(killed, "execution drained");
    }

    /// Spawns the workers and the expiry of finished operations on the current runtime.
    pub fn start(&self) {
        worker::spawn_workers(self.workers.clone(), self.worker_count);
        self.operations().spawn_expiry();
        self.bots.spawn_expiry();
        tracing::info!(
            local_workers = self.worker_count,
            local_pool = ?(self.worker_count > 0).then(|| self.pools().name(self.workers.pool)),
            pools = ?self.pools().iter().map(|p| &p.name).collect::<Vec<_>>(),
            sandbox = self.sandbox.backend.name(),
            "execution enabled"
        );
    }
}
