//! Remote Asset Fetch and Push (build.bazel.remote.asset.v1): validate the request, call
//! [`crate::asset::Assets`], build the reply.
//!
//! A Fetch that finds nothing and tried nothing (no reference, no download allowed) fails
//! with the RPC status NOT_FOUND, as Buildbarn's asset server does and BuildStream 1.6
//! requires (it reads any successful reply as a hit). A download that was tried and failed
//! is reported in the reply's `status`, as the spec says.

use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use crate::asset::{Fetched, Query, Resolved};
use crate::auth::Role;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse,
    PushBlobRequest, PushBlobResponse, PushDirectoryRequest, PushDirectoryResponse, Qualifier,
    fetch_server::Fetch, push_server::Push,
};
use crate::proto::remote_execution as re;
use crate::proto::rpc;
use crate::state::Context;
use crate::storage::asset_store::{AssetKind, AssetRecord};

pub struct FetchService {
    ctx: Context,
}

impl FetchService {
    pub fn new(ctx: Context) -> Self {
        FetchService { ctx }
    }
}

pub struct PushService {
    ctx: Context,
}

impl PushService {
    pub fn new(ctx: Context) -> Self {
        PushService { ctx }
    }
}

/// The fields every Fetch and Push request shares, before validation.
struct Common<'a> {
    instance_name: String,
    kind: AssetKind,
    digest_function: i32,
    uris: Vec<String>,
    qualifiers: &'a [Qualifier],
}

impl Common<'_> {
    fn validate(self) -> Result<Query, Error> {
        if self.uris.is_empty() {
            return Err(Error::BadInput("at least one URI is required".into()));
        }
        if self.uris.iter().any(String::is_empty) {
            return Err(Error::BadInput("a URI is empty".into()));
        }
        Ok(Query {
            instance: self.instance_name,
            kind: self.kind,
            function: DigestFunction::from_proto(self.digest_function)?,
            uris: self.uris,
            qualifiers: crate::asset::qualifiers(
                self.qualifiers
                    .iter()
                    .map(|q| (q.name.clone(), q.value.clone())),
            )?,
        })
    }
}

/// What a successful Fetch reply carries, whatever its kind.
struct Reply {
    status: rpc::Status,
    uri: String,
    expires_at: Option<prost_types::Timestamp>,
    digest: Option<re::Digest>,
}

fn reply(fetched: Fetched) -> Reply {
    match fetched {
        Fetched::Found(Resolved { uri, record }) => Reply {
            status: crate::error::ok_status(),
            uri,
            expires_at: record.expire_at.map(prost_types::Timestamp::from),
            digest: Some(record.digest.to_proto()),
        },
        Fetched::Failed { uri, error } => Reply {
            status: error.to_rpc_status(),
            uri,
            expires_at: None,
            digest: None,
        },
    }
}

fn time(ts: Option<prost_types::Timestamp>, what: &str) -> Result<Option<SystemTime>, Error> {
    ts.map(|ts| {
        SystemTime::try_from(ts)
            .map_err(|e| Error::BadInput(format!("{what} is not a valid timestamp: {e}")))
    })
    .transpose()
}

/// The request's origin timeout; zero or absent means none.
fn timeout(d: Option<prost_types::Duration>) -> Result<Option<Duration>, Error> {
    let Some(d) = d else { return Ok(None) };
    let d = Duration::try_from(d)
        .map_err(|e| Error::BadInput(format!("timeout is not a valid duration: {e}")))?;
    Ok(Some(d).filter(|d| !d.is_zero()))
}

impl FetchService {
    async fn fetch(
        &self,
        caller: crate::auth::Caller,
        common: Common<'_>,
        oldest: Option<prost_types::Timestamp>,
        timeout_field: Option<prost_types::Duration>,
    ) -> Result<(Reply, DigestFunction), Error> {
        self.ctx
            .authorize(&caller, &common.instance_name, Role::Read)?;
        let query = common.validate()?;
        let function = query.function;
        let oldest = time(oldest, "oldest_content_accepted")?;
        let fetched = self
            .ctx
            .asset
            .fetch(query, oldest, timeout(timeout_field)?)
            .await?;
        Ok((reply(fetched), function))
    }
}

#[tonic::async_trait]
impl Fetch for FetchService {
    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let common = Common {
            instance_name: req.instance_name,
            kind: AssetKind::Blob,
            digest_function: req.digest_function,
            uris: req.uris,
            qualifiers: &req.qualifiers,
        };
        let (r, function) = self
            .fetch(caller, common, req.oldest_content_accepted, req.timeout)
            .await?;
        Ok(Response::new(FetchBlobResponse {
            status: Some(r.status),
            uri: r.uri,
            qualifiers: req.qualifiers,
            expires_at: r.expires_at,
            blob_digest: r.digest,
            digest_function: function.to_proto() as i32,
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let common = Common {
            instance_name: req.instance_name,
            kind: AssetKind::Directory,
            digest_function: req.digest_function,
            uris: req.uris,
            qualifiers: &req.qualifiers,
        };
        let (r, function) = self
            .fetch(caller, common, req.oldest_content_accepted, req.timeout)
            .await?;
        Ok(Response::new(FetchDirectoryResponse {
            status: Some(r.status),
            uri: r.uri,
            qualifiers: req.qualifiers,
            expires_at: r.expires_at,
            root_directory_digest: r.digest,
            digest_function: function.to_proto() as i32,
        }))
    }
}

/// The fields of a Push request beyond [`Common`].
struct Pushed {
    digest: Option<re::Digest>,
    expire_at: Option<prost_types::Timestamp>,
    references_blobs: Vec<re::Digest>,
    references_directories: Vec<re::Digest>,
}

impl PushService {
    async fn push(
        &self,
        caller: crate::auth::Caller,
        common: Common<'_>,
        pushed: Pushed,
    ) -> Result<(), Error> {
        self.ctx
            .authorize(&caller, &common.instance_name, Role::Write)?;
        let query = common.validate()?;
        let function = query.function;
        let what = match query.kind {
            AssetKind::Blob => "blob",
            AssetKind::Directory => "root directory",
        };
        let record = AssetRecord {
            digest: Digest::from_required(function, pushed.digest.as_ref(), what)?,
            inserted_at: SystemTime::now(),
            expire_at: time(pushed.expire_at, "expire_at")?,
            referenced_blobs: Digest::all_from_proto(function, &pushed.references_blobs)?,
            referenced_directories: Digest::all_from_proto(
                function,
                &pushed.references_directories,
            )?,
        };
        self.ctx.asset.push(&query, record).await
    }
}

#[tonic::async_trait]
impl Push for PushService {
    async fn push_blob(
        &self,
        request: Request<PushBlobRequest>,
    ) -> Result<Response<PushBlobResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let common = Common {
            instance_name: req.instance_name,
            kind: AssetKind::Blob,
            digest_function: req.digest_function,
            uris: req.uris,
            qualifiers: &req.qualifiers,
        };
        let pushed = Pushed {
            digest: req.blob_digest,
            expire_at: req.expire_at,
            references_blobs: req.references_blobs,
            references_directories: req.references_directories,
        };
        self.push(caller, common, pushed).await?;
        Ok(Response::new(PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<PushDirectoryRequest>,
    ) -> Result<Response<PushDirectoryResponse>, Status> {
        let caller = crate::auth::caller(&request);
        let req = request.into_inner();
        let common = Common {
            instance_name: req.instance_name,
            kind: AssetKind::Directory,
            digest_function: req.digest_function,
            uris: req.uris,
            qualifiers: &req.qualifiers,
        };
        let pushed = Pushed {
            digest: req.root_directory_digest,
            expire_at: req.expire_at,
            references_blobs: req.references_blobs,
            references_directories: req.references_directories,
        };
        self.push(caller, common, pushed).await?;
        Ok(Response::new(PushDirectoryResponse {}))
    }
}
