//! google.longrunning.Operations over the execution engine's operations: get, list (per
//! instance, paged), cancel, delete and wait.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::auth::{Caller, Role};
use crate::error::Error;
use crate::execution::registry::name_prefix;
use crate::execution::{Engine, OperationState};
use crate::proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest, operations_server::Operations,
};
use crate::state::Context;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// WaitOperation without a timeout waits at most this long.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

pub struct OperationsService {
    ctx: Context,
}

impl OperationsService {
    pub fn new(ctx: Context) -> Self {
        OperationsService { ctx }
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.ctx
            .execution
            .as_ref()
            .ok_or_else(|| Error::Disabled("remote execution is disabled on this server".into()))
    }

    /// The named operation, if `caller` holds `role` on its instance.
    fn find(&self, caller: &Caller, name: &str, role: Role) -> Result<Arc<OperationState>, Error> {
        let op = self.engine()?.wait(name)?;
        crate::auth::authorize(caller, &op.instance, role)?;
        Ok(op)
    }
}

/// A page token is the name of the last operation of the previous page: the instance's
/// operation prefix and a UUID. That operation may be gone since; the position still holds.
/// Anything else was not issued by this server.
fn check_page_token(instance: &str, token: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Ok(());
    }
    let issued = token
        .strip_prefix(&name_prefix(instance))
        .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok());
    if issued {
        Ok(())
    } else {
        Err(Error::BadInput(format!(
            "page_token {token:?} was not issued by this server for instance {instance:?}; \
             start again with an empty page_token"
        )))
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        if !req.filter.is_empty() {
            return Err(Error::BadInput(
                "filter is not supported; select an instance with name = \"{instance}/operations\""
                    .into(),
            )
            .into());
        }
        let instance = match req.name.as_str() {
            "" | "operations" => "",
            name => name.strip_suffix("/operations").unwrap_or(name),
        };
        self.ctx.authorize(&caller, instance, Role::Read)?;
        if req.page_size < 0 {
            return Err(Error::BadInput("page_size must not be negative".into()).into());
        }
        let page_size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        check_page_token(instance, &req.page_token)?;
        let (page, more) = self
            .engine()?
            .operations()
            .page(instance, &req.page_token, page_size);
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        let page: Vec<Operation> = page.iter().map(|op| op.to_proto()).collect();
        Ok(Response::new(ListOperationsResponse {
            operations: page,
            next_page_token,
            ..Default::default()
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = crate::auth::caller(&request);
        Ok(Response::new(
            self.find(&caller, &request.get_ref().name, Role::Read)?
                .to_proto(),
        ))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = crate::auth::caller(&request);
        let name = &request.get_ref().name;
        self.find(&caller, name, Role::Execute)?;
        self.engine()?.operations().remove(name);
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = crate::auth::caller(&request);
        let op = self.find(&caller, &request.get_ref().name, Role::Execute)?;
        self.engine()?.cancel(&op, "cancelled by CancelOperation");
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let op = self.find(&caller, &req.name, Role::Read)?;
        let timeout = req
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .unwrap_or(DEFAULT_WAIT);
        let mut rx = op.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|p| matches!(p, crate::execution::Progress::Completed(_))),
        )
        .await;
        Ok(Response::new(op.to_proto()))
    }
}
