//! The two ends of running a job that every executor shares, whichever kind it is (a local
//! worker slot today, a remote bot later): [`begin`] when an executor takes a job from the
//! scheduler, [`finish`] when it has a result. Between them the executor stages, runs and
//! collects the action its own way. `finish` writes the action cache, records the metric and
//! the one "action completed" log line, and completes the operation for every waiter.

use crate::error::Error;
use crate::execution::scheduler::Job;
use crate::execution::{operations, server_log};
use crate::proto::remote_execution::{ActionResult, ExecutedActionMetadata};
use crate::storage::TieredStore;

/// Marks `job` as executing on `executor`; `None` if it was cancelled while queued (the
/// executor then skips it). Otherwise the metadata the executor fills in as it goes.
pub fn begin(job: &Job, executor: &str) -> Option<ExecutedActionMetadata> {
    let op = &job.op;
    if op.is_done() {
        return None;
    }
    op.set_executing_on(executor);
    tracing::info!(operation = %op.name, action = %job.spec.action_digest, worker = executor, "executing");
    Some(ExecutedActionMetadata {
        worker: executor.to_string(),
        queued_timestamp: Some(job.queued_at.into()),
        worker_start_timestamp: Some(std::time::SystemTime::now().into()),
        ..Default::default()
    })
}

/// How a run ended: a result (whatever its exit code) and the error that cut it short or
/// kept it from producing one.
pub struct RunOutcome {
    pub result: ActionResult,
    pub error: Option<Error>,
    /// How the executor sandboxed the run, for the server log of a failed one; `None` when
    /// it does not say (a remote bot).
    pub sandbox: Option<String>,
}

impl RunOutcome {
    /// The outcome a remote bot reported, which says nothing of its sandbox.
    pub fn reported(result: ActionResult, error: Option<Error>) -> Self {
        RunOutcome {
            result,
            error,
            sandbox: None,
        }
    }

    /// Whether the run failed: an error, or a non-zero exit.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.result.exit_code != 0
    }
}

/// Finishes `job` with what its executor reports.
pub async fn finish(
    store: &TieredStore,
    job: &Job,
    mut outcome: RunOutcome,
    mut metadata: ExecutedActionMetadata,
) {
    let op = &job.op;
    // A bot reports its own; a local worker finishes now.
    metadata
        .worker_completed_timestamp
        .get_or_insert_with(|| std::time::SystemTime::now().into());
    let phases = Phases::of(&metadata);
    let worker = metadata.worker.clone();
    outcome.result.execution_metadata = Some(metadata);
    let failed = outcome.failed();
    let digest = job.spec.action_digest;
    let ac_started = std::time::Instant::now();
    if !failed && job.spec.cacheable() {
        if let Err(e) = store
            .put_action_result(&job.spec.instance, &digest, &outcome.result)
            .await
        {
            tracing::error!(operation = %op.name, action = %digest, error = %e, "cannot write the action cache");
        }
    }
    let ac_write_us = ac_started.elapsed().as_micros() as u64;
    let label = match &outcome.error {
        None if outcome.result.exit_code == 0 => "success",
        None => "nonzero_exit",
        Some(Error::TimedOut(_)) => "timeout",
        Some(Error::Cancelled(_)) => "cancelled",
        Some(_) => "error",
    };
    let elapsed = job.queued_at.elapsed().unwrap_or_default();
    metrics::histogram!("rexd_action_duration_seconds", "outcome" => label)
        .record(elapsed.as_secs_f64());
    // One structured line per finished action, with what the client said about it.
    let m = op.request_metadata.clone().unwrap_or_default();
    let tool = m.tool_details.unwrap_or_default();
    tracing::info!(
        operation = %op.name,
        action = %digest,
        instance = %job.spec.instance,
        outcome = label,
        worker = %worker,
        exit_code = outcome.result.exit_code,
        status = outcome.error.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "OK".into()),
        duration_ms = elapsed.as_millis() as u64,
        queued_us = phases.queued_us,
        stage_us = phases.stage_us,
        run_us = phases.run_us,
        upload_us = phases.upload_us,
        ac_write_us,
        tool = %tool.tool_name,
        tool_version = %tool.tool_version,
        invocation = %m.tool_invocation_id,
        correlated_invocations = %m.correlated_invocations_id,
        mnemonic = %m.action_mnemonic,
        target = %m.target_id,
        "action completed"
    );
    // An operation already completed (cancelled, or ended by a shutdown's drain) has no
    // one left to read a log, and a shutdown must not wait on writing one.
    let log = match failed && !op.is_done() {
        true => {
            let metadata = outcome
                .result
                .execution_metadata
                .clone()
                .unwrap_or_default();
            server_log::store(store, &digest, &op.name, &outcome, &metadata).await
        }
        false => None,
    };
    let mut response = operations::execute_response(Some(outcome.result), false, outcome.error);
    if let Some(log) = log {
        response
            .server_logs
            .insert(server_log::LOG_NAME.to_string(), log);
    }
    op.complete(response);
}

/// Where a finished action's time went, in microseconds, from the timestamps its executor
/// recorded: the "action completed" line carries them so a slow pipeline can be taken apart.
struct Phases {
    queued_us: u64,
    stage_us: u64,
    run_us: u64,
    upload_us: u64,
}

impl Phases {
    fn of(m: &ExecutedActionMetadata) -> Self {
        let us = |from: &Option<prost_types::Timestamp>, to: &Option<prost_types::Timestamp>| {
            let (Some(from), Some(to)) = (from, to) else {
                return 0;
            };
            let nanos =
                |t: &prost_types::Timestamp| t.seconds as i128 * 1_000_000_000 + t.nanos as i128;
            ((nanos(to) - nanos(from)).max(0) / 1000) as u64
        };
        Phases {
            queued_us: us(&m.queued_timestamp, &m.worker_start_timestamp),
            stage_us: us(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
            run_us: us(
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
            upload_us: us(
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        }
    }
}
