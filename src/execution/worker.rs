//! Local workers, the first kind of executor: each takes the next job from the scheduler and
//! runs it through the phases prepare (stage inputs), execute and upload (collect outputs),
//! between the [`completion::begin`] and [`completion::finish`] every executor shares, and
//! cleans its slot up after `finish` has answered the client.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::error::Error;
use crate::execution::completion::{self, RunOutcome};
use crate::execution::outputs;
use crate::execution::pools::PoolId;
use crate::execution::runner::{self, RunEnd};
use crate::execution::sandbox::{Backend, Sandbox, kill_all_of_uid};
use crate::execution::scheduler::{Job, Scheduler};
use crate::execution::skeleton::Skeleton;
use crate::execution::spec::ActionSpec;
use crate::execution::stage;
use crate::execution::warm::{WarmRun, WarmSandbox};
use crate::offload::blocking;
use crate::proto::remote_execution::{ActionResult, ExecutedActionMetadata};
use crate::storage::ExecutableCache;
use crate::storage::{Cas, TieredStore, Unsynced};
use tokio_util::sync::CancellationToken;

/// What running an action on this host needs, whoever scheduled it: the server's local
/// workers, or a `rexd worker` bot serving another server's leases.
#[derive(Clone)]
pub struct Slots {
    pub cas: Cas,
    pub exec_cache: Arc<ExecutableCache>,
    /// Parent of the per-slot directories.
    pub work_dir: PathBuf,
    pub keep_failed_action_dirs: bool,
    pub sandbox: Arc<Sandbox>,
    /// The directories each slot's exec root kept from its last action, by slot; at most
    /// one entry per slot.
    skeletons: Arc<Mutex<HashMap<usize, Skeleton>>>,
}

/// What the server's local workers share.
#[derive(Clone)]
pub struct WorkerContext {
    pub slots: Slots,
    pub store: TieredStore,
    pub scheduler: Arc<Scheduler>,
    /// The pool whose actions the local workers take.
    pub pool: PoolId,
}

/// Starts `count` workers; they run until the runtime shuts down.
pub fn spawn_workers(ctx: WorkerContext, count: usize) {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    for n in 0..count {
        let ctx = ctx.clone();
        let name = format!(
            "{host}/rexd-worker-{n} ({})",
            ctx.slots.sandbox.backend.name()
        );
        tokio::spawn(async move {
            let mut warm = None;
            loop {
                let job = ctx.scheduler.next(ctx.pool).await;
                run_job(&ctx, n, &name, &job, &mut warm).await;
                ctx.scheduler.finished(&job);
            }
        });
    }
}

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}

async fn run_job(
    ctx: &WorkerContext,
    slot: usize,
    worker: &str,
    job: &Job,
    warm: &mut Option<WarmSandbox>,
) {
    let Some(mut metadata) = completion::begin(job, worker) else {
        return; // Cancelled while queued.
    };
    let (outcome, used) = ctx
        .slots
        .run_leaving_dir(slot, &job.spec, &job.op.cancel, &mut metadata, warm)
        .await;
    // The client hears of the result before the exec root is emptied: removing an input
    // tree's links is work the action's reply need not wait for.
    completion::finish(&ctx.store, job, outcome, metadata).await;
    used.reset().await;
}

impl Slots {
    /// Prepares the slots' directories under `data_dir` (blocking): the work directory,
    /// emptied of actions that were running when the process stopped, the executable
    /// copies, and the sandbox.
    pub fn open(
        cas: Cas,
        data_dir: &std::path::Path,
        sandbox: &crate::config::SandboxConfig,
        keep_failed_action_dirs: bool,
    ) -> Result<Slots, Error> {
        let work_dir = crate::storage::layout::work(data_dir);
        if work_dir.exists() {
            std::fs::remove_dir_all(&work_dir)
                .map_err(|e| Error::io(format!("clearing {}", work_dir.display()), e))?;
        }
        crate::storage::ensure_private_dir(&work_dir)?;
        Ok(Slots {
            cas,
            exec_cache: Arc::new(ExecutableCache::open(data_dir)?),
            work_dir,
            keep_failed_action_dirs,
            sandbox: Arc::new(Sandbox::detect(sandbox)?),
            skeletons: Arc::default(),
        })
    }

    /// What slot `slot`'s exec root kept from its last action (nothing the first time).
    fn take_skeleton(&self, slot: usize) -> Skeleton {
        let mut skeletons = self.skeletons.lock().unwrap_or_else(|e| e.into_inner());
        skeletons.remove(&slot).unwrap_or_default()
    }

    /// Runs `spec` in slot `slot` (stage, execute, collect outputs into the CAS), filling in
    /// the phase timestamps, and empties the slot for the next action.
    pub async fn run(
        &self,
        slot: usize,
        spec: &ActionSpec,
        cancel: &CancellationToken,
        metadata: &mut ExecutedActionMetadata,
        warm: &mut Option<WarmSandbox>,
    ) -> RunOutcome {
        let (outcome, used) = self
            .run_leaving_dir(slot, spec, cancel, metadata, warm)
            .await;
        used.reset().await;
        outcome
    }

    /// [`Slots::run`], but the slot's directory still holds the action's files until the
    /// caller resets it, which it must do before the slot's next action.
    pub async fn run_leaving_dir(
        &self,
        slot: usize,
        spec: &ActionSpec,
        cancel: &CancellationToken,
        metadata: &mut ExecutedActionMetadata,
        warm: &mut Option<WarmSandbox>,
    ) -> (RunOutcome, UsedSlot) {
        // Each slot reuses one directory (its exec root emptied of files after every action
        // but keeping its directories, its stdout and stderr files truncated): creating and
        // deleting inodes per action is a large part of a short action's cost on ext4, which
        // scans recently deleted inodes on every create.
        let dir = self.work_dir.join(format!("slot-{slot}"));
        let sandbox = Some(
            self.sandbox
                .describe(self.sandbox.run_as(slot), &spec.options),
        );
        let outcome = match execute(self, slot, spec, cancel, &dir, metadata, warm).await {
            Ok((result, error)) => RunOutcome {
                result,
                error,
                sandbox,
            },
            Err(e) => RunOutcome {
                result: ActionResult::default(),
                error: Some(e),
                sandbox,
            },
        };
        let keep = (outcome.failed() && self.keep_failed_action_dirs).then(|| {
            self.work_dir
                .join(format!("failed-{}", uuid::Uuid::new_v4()))
        });
        let skeletons = self.skeletons.clone();
        (
            outcome,
            UsedSlot {
                dir,
                keep,
                slot,
                skeletons,
            },
        )
    }
}

/// A slot whose directory still holds its last action's files.
#[must_use = "a slot must be reset before its next action"]
pub struct UsedSlot {
    dir: PathBuf,
    /// Where a failed action's directory is kept for debugging, if it is.
    keep: Option<PathBuf>,
    slot: usize,
    skeletons: Arc<Mutex<HashMap<usize, Skeleton>>>,
}

impl UsedSlot {
    /// Empties the slot's exec root for its next action.
    pub async fn reset(self) {
        let _ = blocking(move || {
            let skeleton = Skeleton::reset(&self.dir, self.keep.as_deref());
            let mut skeletons = self.skeletons.lock().unwrap_or_else(|e| e.into_inner());
            skeletons.insert(self.slot, skeleton);
            Ok(())
        })
        .await;
    }
}

/// The phases of one action. Errors that stop the action before it produced a result come
/// back as `Err`; a result with an error status (timeout, cancel) comes back as `Ok`.
async fn execute(
    ctx: &Slots,
    slot: usize,
    spec: &ActionSpec,
    cancel: &CancellationToken,
    dir: &std::path::Path,
    metadata: &mut ExecutedActionMetadata,
    warm: &mut Option<WarmSandbox>,
) -> Result<(ActionResult, Option<Error>), Error> {
    let exec_root = dir.join("root");
    let run_as = ctx.sandbox.run_as(slot);
    // Inputs stay in the CAS while the action runs.
    let function = spec.action_digest.function();
    let _inputs_lease = ctx.cas.lease(spec.inputs.files.clone());

    // Prepare.
    metadata.input_fetch_start_timestamp = now();
    let (stdout, stderr) = {
        let cas = ctx.cas.clone();
        let exec_cache = ctx.exec_cache.clone();
        let exec_root = exec_root.clone();
        let dir = dir.to_path_buf();
        let inputs = spec.inputs.clone();
        let command = spec.command.clone();
        let kept = ctx.take_skeleton(slot);
        blocking(move || {
            std::fs::create_dir_all(&exec_root)
                .map_err(|e| Error::io(format!("creating {}", exec_root.display()), e))?;
            let leftovers = kept.is_empty()
                && std::fs::read_dir(&exec_root)
                    .map_err(|e| Error::io(format!("listing {}", exec_root.display()), e))?
                    .next()
                    .is_some();
            if leftovers {
                return Err(Error::Bug(format!(
                    "{} still holds an earlier action's files",
                    exec_root.display()
                )));
            }
            // Kept directories this tree has no use for go first: a file may take the name.
            let (kept_directories, used) = (kept.len(), stage::directories_of(&inputs, &command)?);
            let pruned_directories = kept.prune(&exec_root, &used)?;
            let mut stats = stage::stage_tree(&cas, &exec_cache, &inputs, &exec_root, run_as)?;
            stage::create_output_parents(&exec_root, &command, run_as)?;
            stats.kept_directories = kept_directories;
            stats.pruned_directories = pruned_directories;
            tracing::debug!(?stats, "staged inputs");
            let stdout = std::fs::File::create(dir.join("stdout"))
                .map_err(|e| Error::io("creating the stdout file", e))?;
            let stderr = std::fs::File::create(dir.join("stderr"))
                .map_err(|e| Error::io("creating the stderr file", e))?;
            Ok((stdout, stderr))
        })
        .await?
    };
    metadata.input_fetch_completed_timestamp = now();

    // Execute.
    let started = SystemTime::now();
    metadata.execution_start_timestamp = Some(started.into());
    let end = if ctx.sandbox.reusable_for(&spec.options) {
        run_warm(
            ctx,
            warm,
            &exec_root,
            run_as,
            spec,
            cancel,
            (stdout, stderr),
        )
        .await
    } else {
        run_cold(ctx, &exec_root, run_as, spec, cancel, (stdout, stderr)).await
    };
    metadata.execution_completed_timestamp = now();
    if let (Some((uid, _)), Backend::Plain) = (run_as, &ctx.sandbox.backend) {
        // Without a pid namespace, a daemon that left the process group lives on; its uid
        // gives it away.
        blocking(move || {
            kill_all_of_uid(uid);
            Ok(())
        })
        .await?;
    }
    if run_as.is_none() {
        // The action ran as the CAS's owner: make sure it did not write through its inputs.
        let cas = ctx.cas.clone();
        let inputs = spec.inputs.clone();
        let damaged =
            blocking(move || Ok(stage::find_modified_inputs(&cas, &inputs.files, started))).await?;
        if !damaged.is_empty() {
            return Err(Error::Unsatisfiable(format!(
                "the action wrote into {} of its read-only inputs (first: {}); they were removed \
                 from the CAS",
                damaged.len(),
                damaged[0]
            )));
        }
    }
    let collect_outputs = matches!(end, Ok(RunEnd::Exited(_)));
    let (exit_code, mut status) = match end {
        Ok(RunEnd::Exited(code)) => (code, None),
        Ok(RunEnd::TimedOut) => (
            -1,
            Some(Error::TimedOut(format!(
                "action timed out after {}s; its processes were killed",
                spec.timeout.as_secs_f64()
            ))),
        ),
        Ok(RunEnd::Cancelled) => (
            -1,
            Some(Error::Cancelled("the operation was cancelled".into())),
        ),
        Err(e) => (-1, Some(e)),
    };

    // Upload. Outputs are collected only from a command that ran; stdout and stderr always.
    metadata.output_upload_start_timestamp = now();
    let cas = ctx.cas.clone();
    let command = spec.command.clone();
    let dir = dir.to_path_buf();
    let result = blocking(move || {
        let mut result = ActionResult {
            exit_code,
            ..Default::default()
        };
        let mut unsynced = Unsynced::default();
        let (stdout_path, stderr_path) = (dir.join("stdout"), dir.join("stderr"));
        let stdout = cas.adopt_file(&stdout_path, function, &mut unsynced)?;
        let stderr = cas.adopt_file(&stderr_path, function, &mut unsynced)?;
        cas.pin([&stdout, &stderr]);
        result.stdout_digest = Some(stdout.to_proto());
        result.stderr_digest = Some(stderr.to_proto());
        let mut total = stdout.size() + stderr.size();
        if collect_outputs {
            total += outputs::collect(
                &cas,
                &mut unsynced,
                function,
                &dir.join("root"),
                &command,
                &mut result,
            )?;
        }
        cas.sync_adopted(unsynced)?;
        forget_output_streams([(&stdout_path, stdout), (&stderr_path, stderr)])?;
        Ok((result, total))
    })
    .await;
    metadata.output_upload_completed_timestamp = now();
    let (result, total) = result?;
    let max = ctx.sandbox.max_output_size();
    if status.is_none() && (total >= max || result.exit_code == runner::EXIT_FILE_TOO_LARGE) {
        status = Some(Error::OverLimit(format!(
            "the action's output ({total} bytes of stdout, stderr and output files, or a \
             single file cut off at the limit) reached the server's max_output_size of {max} bytes"
        )));
    }
    Ok((result, status))
}

/// Runs the action in the worker's long-lived sandbox, starting one if there is none or the
/// one there shows another exec root. If none can start, the server stops reusing
/// sandboxes and this action gets one of its own.
async fn run_warm(
    ctx: &Slots,
    warm: &mut Option<WarmSandbox>,
    exec_root: &std::path::Path,
    run_as: Option<(u32, u32)>,
    spec: &ActionSpec,
    cancel: &CancellationToken,
    stdio: (std::fs::File, std::fs::File),
) -> Result<RunEnd, Error> {
    if warm.as_ref().is_some_and(|w| !w.shows(exec_root)) {
        *warm = None;
    }
    let sandbox = match warm {
        Some(sandbox) => sandbox,
        None => match WarmSandbox::start(&ctx.sandbox, exec_root, run_as).await {
            Ok(started) => warm.insert(started),
            Err(e) => {
                ctx.sandbox.stop_reusing(&e);
                return run_cold(ctx, exec_root, run_as, spec, cancel, stdio).await;
            }
        },
    };
    let run = sandbox
        .run(&spec.command, (&stdio.0, &stdio.1), spec.timeout, cancel)
        .await;
    match run {
        WarmRun::Ran(end, reusable) => {
            if !reusable {
                *warm = None;
            }
            end
        }
        WarmRun::NotSent(e) => {
            tracing::warn!(error = %e, "a long-lived sandbox was gone; running the action in a new one");
            *warm = None;
            run_cold(ctx, exec_root, run_as, spec, cancel, stdio).await
        }
    }
}

/// Runs the action in a process (under bubblewrap, a sandbox) of its own.
async fn run_cold(
    ctx: &Slots,
    exec_root: &std::path::Path,
    run_as: Option<(u32, u32)>,
    spec: &ActionSpec,
    cancel: &CancellationToken,
    stdio: (std::fs::File, std::fs::File),
) -> Result<RunEnd, Error> {
    let process = ctx
        .sandbox
        .command(&spec.command, exec_root, &spec.options, run_as, stdio)?;
    runner::run(process, &spec.command.arguments[0], spec.timeout, cancel).await
}

/// Unlinks the captured stdout and stderr files whose content became CAS blobs (they may now
/// be those blobs, hardlinked), so the next action cannot truncate them; empty ones stay for
/// reuse.
fn forget_output_streams(
    streams: [(&std::path::Path, crate::digest::Digest); 2],
) -> Result<(), Error> {
    for (path, digest) in streams {
        if digest.size() > 0 {
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}
