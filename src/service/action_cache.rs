//! ActionCache: results of earlier actions, served only while every blob they name is still
//! in the CAS.

use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::remote_execution::{
    ActionResult, GetActionResultRequest, UpdateActionResultRequest,
    action_cache_server::ActionCache,
};
use crate::state::Context;
use crate::storage::Cas;

/// Most bytes of stdout, stderr and output files inlined into one GetActionResult reply.
const MAX_INLINE_BYTES: u64 = 1024 * 1024;

pub struct ActionCacheService {
    ctx: Context,
}

impl ActionCacheService {
    pub fn new(ctx: Context) -> Self {
        ActionCacheService { ctx }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let caller = crate::auth::caller(&request);
        let request_metadata = crate::service::execution::request_metadata(&request);
        let req = request.into_inner();
        self.ctx
            .authorize(&caller, &req.instance_name, Role::Read)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_required(function, req.action_digest.as_ref(), "action")?;
        let Some(mut result) = self
            .ctx
            .store
            .action_result(&req.instance_name, &digest)
            .await?
        else {
            self.ctx.history.record_miss();
            return Err(Error::Absent(format!("no action result for {digest}")).into());
        };
        self.ctx.history.record_hit(
            &req.instance_name,
            digest,
            request_metadata.as_ref(),
            &result,
        );
        let wanted = inline_candidates(function, &result, &req);
        self.ctx.store.ensure_local(&wanted).await;
        let cas = self.ctx.cas.clone();
        let result = blocking(move || {
            inline_outputs(&cas, function, &mut result, &req)?;
            Ok(result)
        })
        .await?;
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let instance = self
            .ctx
            .authorize(&caller, &req.instance_name, Role::AcWrite)?;
        if !instance.allow_ac_updates {
            return Err(Error::Denied(format!(
                "instance {:?} does not accept UpdateActionResult: only this server's own \
                 workers write its action cache",
                req.instance_name
            ))
            .into());
        }
        let function = DigestFunction::from_proto(req.digest_function)?;
        let digest = Digest::from_required(function, req.action_digest.as_ref(), "action")?;
        let result = req
            .action_result
            .ok_or_else(|| Error::BadInput("action_result is missing".into()))?;
        // Malformed digests are the client's error; missing blobs (down to the files inside
        // output trees) would make the entry useless, so it is refused rather than stored.
        referenced_digests(function, &result)?;
        let missing = self.ctx.store.missing_of_result(&digest, &result).await?;
        if !missing.is_empty() {
            return Err(Error::MissingBlobs(missing).into());
        }
        self.ctx
            .store
            .put_action_result(&req.instance_name, &digest, &result)
            .await?;
        Ok(Response::new(result))
    }
}

/// The top-level blobs a result names (files, trees, directories, stdout and stderr); fails
/// on the first malformed one.
fn referenced_digests(
    function: DigestFunction,
    result: &ActionResult,
) -> Result<Vec<Digest>, Error> {
    let mut out = Vec::new();
    for file in &result.output_files {
        out.push(Digest::from_required(
            function,
            file.digest.as_ref(),
            "output file",
        )?);
    }
    for dir in &result.output_directories {
        for d in [&dir.tree_digest, &dir.root_directory_digest]
            .into_iter()
            .flatten()
        {
            out.push(Digest::from_proto(function, d)?);
        }
    }
    for d in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        out.push(Digest::from_proto(function, d)?);
    }
    Ok(out)
}

/// The blobs [`inline_outputs`] may read, so a tier behind the local disk can bring them
/// first; the size budget is applied there.
fn inline_candidates(
    function: DigestFunction,
    result: &ActionResult,
    req: &GetActionResultRequest,
) -> Vec<Digest> {
    let mut out = Vec::new();
    let mut add = |d: &Option<crate::proto::remote_execution::Digest>| {
        if let Some(d) = d
            .as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
        {
            if d.size() <= MAX_INLINE_BYTES {
                out.push(d);
            }
        }
    };
    if req.inline_stdout && result.stdout_raw.is_empty() {
        add(&result.stdout_digest);
    }
    if req.inline_stderr && result.stderr_raw.is_empty() {
        add(&result.stderr_digest);
    }
    for file in &result.output_files {
        if file.contents.is_empty() && req.inline_output_files.contains(&file.path) {
            add(&file.digest);
        }
    }
    out
}

/// Fills in the inline contents the client asked for, within [`MAX_INLINE_BYTES`].
fn inline_outputs(
    cas: &Cas,
    function: DigestFunction,
    result: &mut ActionResult,
    req: &GetActionResultRequest,
) -> Result<(), Error> {
    let mut budget = MAX_INLINE_BYTES;
    let mut take = |digest: &Option<crate::proto::remote_execution::Digest>| -> Result<Option<bytes::Bytes>, Error> {
        let Some(d) = digest else { return Ok(None) };
        let d = Digest::from_proto(function, d)?;
        if d.size() > budget {
            return Ok(None);
        }
        let data = cas.read(&d)?;
        if data.is_some() {
            budget -= d.size();
        }
        Ok(data)
    };
    if req.inline_stdout && result.stdout_raw.is_empty() {
        if let Some(data) = take(&result.stdout_digest)? {
            result.stdout_raw = data;
        }
    }
    if req.inline_stderr && result.stderr_raw.is_empty() {
        if let Some(data) = take(&result.stderr_digest)? {
            result.stderr_raw = data;
        }
    }
    for file in &mut result.output_files {
        if file.contents.is_empty() && req.inline_output_files.contains(&file.path) {
            if let Some(data) = take(&file.digest)? {
                file.contents = data;
            }
        }
    }
    Ok(())
}
