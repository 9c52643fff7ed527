//! Execution: Execute and WaitExecution. The adapter checks the caller and the request, asks
//! the engine, and streams the operation's updates until the action is done.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::execution::{Engine, OperationState, Submission};
use crate::proto::longrunning::Operation;
use crate::proto::remote_execution::{
    ExecuteRequest, RequestMetadata, WaitExecutionRequest, execution_server::Execution,
};
use crate::state::Context;

/// The gRPC header in which REAPI clients describe themselves.
pub const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

pub struct ExecutionService {
    ctx: Context,
}

impl ExecutionService {
    pub fn new(ctx: Context) -> Self {
        ExecutionService { ctx }
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.ctx
            .execution
            .as_ref()
            .ok_or_else(|| Error::Disabled("remote execution is disabled on this server".into()))
    }
}

/// Decodes the client's RequestMetadata header, if it sent a valid one.
pub fn request_metadata<T>(request: &Request<T>) -> Option<RequestMetadata> {
    let value = request.metadata().get_bin(REQUEST_METADATA_HEADER)?;
    RequestMetadata::decode(value.to_bytes().ok()?).ok()
}

type OperationStream = tonic::codegen::BoxStream<Operation>;

/// The operation's updates as a gRPC response stream.
fn updates(op: Arc<OperationState>) -> OperationStream {
    Box::pin(op.updates().map(Ok))
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = crate::auth::caller(&request);
        let request_metadata = request_metadata(&request);
        let req = request.into_inner();
        let instance = self
            .ctx
            .authorize(&caller, &req.instance_name, Role::Execute)?
            .clone();
        let engine = self.engine()?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action_digest = Digest::from_required(function, req.action_digest.as_ref(), "action")?;
        let op = engine
            .execute(Submission {
                instance,
                action_digest,
                skip_cache_lookup: req.skip_cache_lookup,
                priority: req.execution_policy.map_or(0, |p| p.priority),
                request_metadata,
            })
            .await?;
        Ok(Response::new(updates(op)))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = crate::auth::caller(&request);
        let op = self.engine()?.wait(&request.get_ref().name)?;
        crate::auth::authorize(&caller, &op.instance, Role::Execute)?;
        Ok(Response::new(updates(op)))
    }
}
