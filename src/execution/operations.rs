//! Long-running operations: the state of one Execute, shared by every client watching it,
//! and how it looks on the wire (Operation, ExecuteOperationMetadata, ExecuteResponse).
//! The registry that keeps them is [`crate::execution::registry`].

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::error::Error;
use crate::execution::registry::Registry;
use crate::proto::longrunning::{Operation, operation};
use crate::proto::remote_execution::{
    ActionResult, ExecuteOperationMetadata, ExecuteResponse, RequestMetadata, execution_stage,
};

/// Where an operation is in its life.
#[derive(Clone, Debug)]
pub enum Progress {
    Queued,
    Executing,
    Completed(Arc<ExecuteResponse>),
}

/// One operation, watched by any number of clients.
pub struct OperationState {
    pub name: String,
    pub instance: String,
    pub action_digest: Digest,
    /// What the client said about itself, for logs and ListOperations.
    pub request_metadata: Option<RequestMetadata>,
    pub(super) progress: watch::Sender<Progress>,
    /// Fired by CancelOperation; the worker running the action kills it.
    pub cancel: CancellationToken,
    /// The registry that retains this operation, told when it finishes.
    pub(super) registry: Weak<Registry>,
    /// When it was submitted.
    pub created: SystemTime,
    /// The executor running it and since when, once one took it.
    pub(super) started: OnceLock<(String, SystemTime)>,
}

impl OperationState {
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn is_done(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Completed(_))
    }

    /// The executor that took it, and when; `None` while queued.
    pub fn started(&self) -> Option<&(String, SystemTime)> {
        self.started.get()
    }

    /// Marks it executing on `executor` (the first executor to take it is remembered).
    pub fn set_executing_on(&self, executor: &str) {
        let _ = self.started.set((executor.to_string(), SystemTime::now()));
        self.set_executing();
    }

    pub fn set_executing(&self) {
        self.progress.send_if_modified(|p| match p {
            Progress::Queued => {
                *p = Progress::Executing;
                true
            }
            _ => false,
        });
    }

    /// Finishes the operation; the first completion wins, later ones are ignored.
    pub fn complete(&self, response: ExecuteResponse) -> bool {
        let response = Arc::new(response);
        let changed = self.progress.send_if_modified(|p| match p {
            Progress::Completed(_) => false,
            _ => {
                *p = Progress::Completed(response.clone());
                true
            }
        });
        if changed && let Some(registry) = self.registry.upgrade() {
            registry.finished(self, &response);
        }
        changed
    }

    /// The operation as clients see it.
    pub fn to_proto(&self) -> Operation {
        progress_to_proto(&self.name, &self.action_digest, &self.progress())
    }
}

/// The one constructor of an ExecuteResponse: a result (fresh or from the cache), or an
/// error that kept the action from producing one (or cut it short).
pub fn execute_response(
    result: Option<ActionResult>,
    cached_result: bool,
    error: Option<Error>,
) -> ExecuteResponse {
    ExecuteResponse {
        result,
        cached_result,
        status: Some(error.map(|e| e.to_rpc_status()).unwrap_or_default()),
        server_logs: Default::default(),
        message: String::new(),
    }
}

/// A waiting client gets the operation again at least this often, so idle streams stay open.
const KEEPALIVE: Duration = Duration::from_secs(30);

impl OperationState {
    /// The updates of this operation from now until it completes: the current state first,
    /// then each change, and the current state again every [`KEEPALIVE`] while nothing
    /// changes.
    pub fn updates(self: Arc<Self>) -> futures::stream::BoxStream<'static, Operation> {
        let rx = self.subscribe();
        Box::pin(futures::stream::unfold(
            Some((self, rx, true)),
            |state| async move {
                let (op, mut rx, first) = state?;
                if !first {
                    // A timeout just re-sends the current state as a keep-alive.
                    if let Ok(Err(_)) = tokio::time::timeout(KEEPALIVE, rx.changed()).await {
                        return None;
                    }
                }
                let progress = rx.borrow_and_update().clone();
                let message = progress_to_proto(&op.name, &op.action_digest, &progress);
                let next = (!message.done).then_some((op, rx, false));
                Some((message, next))
            },
        ))
    }
}

/// Builds the `Operation` message for a given progress.
pub fn progress_to_proto(name: &str, action_digest: &Digest, progress: &Progress) -> Operation {
    let stage = match progress {
        Progress::Queued => execution_stage::Value::Queued,
        Progress::Executing => execution_stage::Value::Executing,
        Progress::Completed(_) => execution_stage::Value::Completed,
    };
    let metadata = ExecuteOperationMetadata {
        stage: stage as i32,
        action_digest: Some(action_digest.to_proto()),
        digest_function: action_digest.function().to_proto() as i32,
        ..Default::default()
    };
    let result = match progress {
        Progress::Completed(response) => Some(operation::Result::Response(prost_types::Any {
            type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                .to_string(),
            value: response.encode_to_vec(),
        })),
        _ => None,
    };
    Operation {
        name: name.to_string(),
        metadata: Some(prost_types::Any {
            type_url:
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
                    .to_string(),
            value: metadata.encode_to_vec(),
        }),
        done: result.is_some(),
        result,
    }
}
