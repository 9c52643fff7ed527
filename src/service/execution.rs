//! Execution: Execute (cache lookup, validation, scheduling) and WaitExecution, both
//! answered with a stream of Operation updates that ends when the action is done.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::execution::{Engine, OperationState, operations::progress_to_proto, spec};
use crate::proto::longrunning::Operation;
use crate::proto::remote_execution::{
    ExecuteRequest, ExecuteResponse, RequestMetadata, WaitExecutionRequest,
    execution_server::Execution,
};
use crate::service::{Context, blocking};
use crate::storage::action_cache::lookup_complete;

/// The gRPC header in which REAPI clients describe themselves.
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";
/// A waiting client gets the operation again at least this often, so idle streams stay open.
const KEEPALIVE: Duration = Duration::from_secs(30);

pub struct ExecutionService {
    ctx: Context,
}

impl ExecutionService {
    pub fn new(ctx: Context) -> Self {
        ExecutionService { ctx }
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.ctx.execution.as_ref().ok_or_else(|| {
            Error::Unimplemented("remote execution is disabled on this server".into())
        })
    }
}

/// Decodes the client's RequestMetadata header, if it sent a valid one.
pub fn request_metadata<T>(request: &Request<T>) -> Option<RequestMetadata> {
    let value = request.metadata().get_bin(REQUEST_METADATA_HEADER)?;
    RequestMetadata::decode(value.to_bytes().ok()?).ok()
}

type OperationStream = tonic::codegen::BoxStream<Operation>;

/// The updates of `op` from now until it completes: the current state first, then each
/// change, and the current state again every [`KEEPALIVE`] while nothing changes.
pub fn watch(op: Arc<OperationState>) -> OperationStream {
    let rx = op.subscribe();
    Box::pin(futures::stream::unfold(
        Some((op, rx, true)),
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
            Some((Ok(message), next))
        },
    ))
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = crate::auth::caller(&request);
        let metadata = request_metadata(&request);
        let req = request.into_inner();
        let instance_config = self
            .ctx
            .authorize(&caller, &req.instance_name, Role::Execute)?
            .clone();
        let engine = self.engine()?.clone();
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_required(function, req.action_digest.as_ref(), "action")?;
        let instance = req.instance_name.clone();

        if !req.skip_cache_lookup {
            let (cas, ac, inst) = (self.ctx.cas.clone(), self.ctx.ac.clone(), instance.clone());
            if let Some(result) =
                blocking(move || lookup_complete(&cas, &ac, &inst, &digest)).await?
            {
                let op = crate::execution::Operations::completed(
                    &instance,
                    digest,
                    ExecuteResponse {
                        result: Some(result),
                        cached_result: true,
                        status: Some(Default::default()),
                        ..Default::default()
                    },
                );
                tracing::info!(operation = %op.name, action = %digest, "served from the action cache");
                return Ok(Response::new(watch(op)));
            }
        }

        let cas = self.ctx.cas.clone();
        let loader = engine.clone();
        let mut spec = blocking(move || {
            spec::load(&cas, &loader.directories, &instance, digest, &loader.limits)
        })
        .await?;
        spec.options = engine
            .sandbox
            .options_for(&spec.platform, &instance_config)?;
        let priority = req.execution_policy.map_or(0, |p| p.priority);
        let op = engine.scheduler.submit(spec, priority, metadata)?;
        Ok(Response::new(watch(op)))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = crate::auth::caller(&request);
        let name = &request.get_ref().name;
        let op = self
            .engine()?
            .operations()
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("no operation named {name:?}")))?;
        crate::auth::authorize(&caller, &op.instance, Role::Execute)?;
        Ok(Response::new(watch(op)))
    }
}
