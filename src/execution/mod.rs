//! Remote execution: validated action specs, the scheduler queue, the operations registry
//! and the local workers that stage, run and collect actions.

pub mod operations;
pub mod outputs;
pub mod runner;
pub mod sandbox;
pub mod scheduler;
pub mod spawn;
pub mod spec;
pub mod stage;
pub mod worker;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ExecutionConfig, SandboxConfig};
use crate::error::Error;
use crate::storage::{ActionCache, Cas};

pub use operations::{OperationState, Operations, Progress};
pub use scheduler::Scheduler;
pub use spec::{ActionSpec, SpecLimits};

/// The execution side of the server: queue, operations and worker settings.
pub struct Engine {
    pub scheduler: Arc<Scheduler>,
    pub limits: SpecLimits,
    pub sandbox: Arc<sandbox::Sandbox>,
    /// Input directories already read and validated.
    pub directories: spec::DirectoryCache,
    workers: worker::WorkerContext,
    worker_count: usize,
}

impl Engine {
    /// Prepares the engine (blocking: creates directories). Workers start with [`Engine::start`].
    pub fn new(
        config: &ExecutionConfig,
        sandbox_config: &SandboxConfig,
        data_dir: &Path,
        cas: Cas,
        ac: ActionCache,
    ) -> Result<Self, Error> {
        let operations = Operations::new(config.retention());
        let scheduler = Arc::new(Scheduler::new(
            operations,
            config.platform_properties(),
            config.max_queued,
        ));
        let work_dir = data_dir.join("work");
        if work_dir.exists() {
            // Directories of actions that were running when the server stopped.
            std::fs::remove_dir_all(&work_dir)
                .map_err(|e| Error::io(format!("clearing {}", work_dir.display()), e))?;
        }
        crate::storage::ensure_private_dir(&work_dir)?;
        let exec_cache = Arc::new(stage::ExecutableCache::open(data_dir)?);
        let sandbox = Arc::new(sandbox::Sandbox::detect(sandbox_config)?);
        Ok(Engine {
            limits: SpecLimits {
                default_timeout: Duration::from_secs(config.default_timeout_secs),
                max_timeout: Duration::from_secs(config.max_timeout_secs),
            },
            workers: worker::WorkerContext {
                cas,
                ac,
                scheduler: scheduler.clone(),
                exec_cache,
                work_dir,
                keep_failed_action_dirs: config.keep_failed_action_dirs,
                sandbox: sandbox.clone(),
            },
            sandbox,
            directories: spec::DirectoryCache::new(config.directory_cache_size.as_u64()),
            worker_count: config.worker_count(),
            scheduler,
        })
    }

    pub fn operations(&self) -> &Operations {
        self.scheduler.operations()
    }

    /// Workers running actions.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    /// Graceful stop: accepts no new actions, fails queued ones at once, lets running ones
    /// finish for up to `grace`, then kills the rest. Every waiter of an action that did not
    /// finish sees UNAVAILABLE.
    pub async fn drain(&self, grace: Duration) {
        let unavailable = |what: &str| crate::proto::remote_execution::ExecuteResponse {
            status: Some(
                Error::Unavailable(format!("the server shut down {what}; retry the action"))
                    .to_rpc_status(),
            ),
            ..Default::default()
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
        tracing::info!(
            workers = self.worker_count,
            platform = ?self.scheduler.platform(),
            sandbox = self.sandbox.backend.name(),
            "execution enabled"
        );
    }
}
