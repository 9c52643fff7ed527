//! The registry of long-running operations: one entry per Execute that was scheduled, shared
//! by every client watching it, kept for a while after it finishes and then forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::proto::longrunning::{Operation, operation};
use crate::proto::remote_execution::{
    ExecuteOperationMetadata, ExecuteResponse, RequestMetadata, execution_stage,
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
    progress: watch::Sender<Progress>,
    /// Fired by CancelOperation; the worker running the action kills it.
    pub cancel: CancellationToken,
    completed_at: Mutex<Option<Instant>>,
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
        if changed {
            *self.completed_at.lock().unwrap() = Some(Instant::now());
        }
        changed
    }

    /// The operation as clients see it.
    pub fn to_proto(&self) -> Operation {
        progress_to_proto(&self.name, &self.action_digest, &self.progress())
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

/// All known operations by name.
#[derive(Clone)]
pub struct Operations {
    // A std Mutex: map operations only, never held across an await.
    map: Arc<Mutex<HashMap<String, Arc<OperationState>>>>,
    ttl: Duration,
}

impl Operations {
    pub fn new(ttl: Duration) -> Self {
        Operations {
            map: Arc::default(),
            ttl,
        }
    }

    /// Registers a new queued operation named `{instance}/operations/{uuid}` (or
    /// `operations/{uuid}` for the default instance).
    pub fn create(
        &self,
        instance: &str,
        action_digest: Digest,
        request_metadata: Option<RequestMetadata>,
    ) -> Arc<OperationState> {
        let id = uuid::Uuid::new_v4();
        let name = if instance.is_empty() {
            format!("operations/{id}")
        } else {
            format!("{instance}/operations/{id}")
        };
        let (progress, _) = watch::channel(Progress::Queued);
        let op = Arc::new(OperationState {
            name: name.clone(),
            instance: instance.to_string(),
            action_digest,
            request_metadata,
            progress,
            cancel: CancellationToken::new(),
            completed_at: Mutex::new(None),
        });
        self.map.lock().unwrap().insert(name, op.clone());
        op
    }

    pub fn get(&self, name: &str) -> Option<Arc<OperationState>> {
        self.map.lock().unwrap().get(name).cloned()
    }

    pub fn remove(&self, name: &str) -> Option<Arc<OperationState>> {
        self.map.lock().unwrap().remove(name)
    }

    /// Operations of `instance`, ordered by name, for paging.
    pub fn list(&self, instance: &str) -> Vec<Arc<OperationState>> {
        let mut ops: Vec<_> = self
            .map
            .lock()
            .unwrap()
            .values()
            .filter(|op| op.instance == instance)
            .cloned()
            .collect();
        ops.sort_by(|a, b| a.name.cmp(&b.name));
        ops
    }

    /// Every operation, of every instance.
    pub fn list_all(&self) -> Vec<Arc<OperationState>> {
        self.map.lock().unwrap().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets operations that finished longer than the TTL ago.
    pub fn expire(&self) {
        let ttl = self.ttl;
        self.map.lock().unwrap().retain(|_, op| {
            op.completed_at
                .lock()
                .unwrap()
                .is_none_or(|at| at.elapsed() < ttl)
        });
    }

    /// Runs [`Operations::expire`] periodically until the registry is dropped.
    pub fn spawn_expiry(&self) {
        let weak = Arc::downgrade(&self.map);
        let ttl = self.ttl;
        let period = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                let Some(map) = weak.upgrade() else { return };
                Operations { map, ttl }.expire();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn lifecycle_and_expiry() {
        let ops = Operations::new(Duration::ZERO);
        let d = Digest::of(DigestFunction::Sha256, b"a");
        let op = ops.create("inst", d, None);
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
        ops.expire();
        assert!(ops.get(&op.name).is_none());
    }
}
