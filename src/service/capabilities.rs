//! Capabilities: tells clients which digest functions, compressors, limits and API versions
//! this server supports.

use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::digest::DigestFunction;
use crate::proto::remote_execution::{
    self as re, ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities,
    FastCdc2020Params, GetCapabilitiesRequest, ServerCapabilities,
    capabilities_server::Capabilities,
};
use crate::proto::semver::SemVer;
use crate::state::Context;

/// Lowest REAPI version served.
pub const LOW_API_VERSION: (i32, i32) = (2, 0);
/// Highest REAPI version whose server obligations rexd meets.
pub const HIGH_API_VERSION: (i32, i32) = (2, 12);

pub struct CapabilitiesService {
    ctx: Context,
}

impl CapabilitiesService {
    pub fn new(ctx: Context) -> Self {
        CapabilitiesService { ctx }
    }
}

fn semver((major, minor): (i32, i32)) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let caller = crate::auth::caller(&request);
        let instance = self
            .ctx
            .authorize(&caller, &request.get_ref().instance_name, Role::Read)?;
        let digest_functions: Vec<i32> = DigestFunction::ALL
            .iter()
            .map(|f| f.to_proto() as i32)
            .collect();
        let chunking = self.ctx.chunker.options().fast_cdc;
        let cache = CacheCapabilities {
            digest_functions: digest_functions.clone(),
            action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                update_enabled: instance.allow_ac_updates,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: self.ctx.max_batch_bytes() as i64,
            symlink_absolute_path_strategy: re::symlink_absolute_path_strategy::Value::Disallowed
                as i32,
            supported_compressors: vec![re::compressor::Value::Zstd as i32],
            supported_batch_update_compressors: vec![re::compressor::Value::Zstd as i32],
            max_cas_blob_size_bytes: self.ctx.settings.written.limits.max_blob_size.as_u64() as i64,
            split_blob_support: true,
            splice_blob_support: true,
            fast_cdc_2020_params: Some(FastCdc2020Params {
                avg_chunk_size_bytes: u64::from(chunking.avg),
                seed: chunking.seed,
            }),
            rep_max_cdc_params: None,
        };
        let execution = ExecutionCapabilities {
            digest_function: DigestFunction::Sha256.to_proto() as i32,
            exec_enabled: self.ctx.execution.is_some(),
            execution_priority_capabilities: None,
            supported_node_properties: self
                .ctx
                .execution
                .as_ref()
                .map(|e| e.pools().property_names().into_iter().collect())
                .unwrap_or_default(),
            digest_functions,
        };
        Ok(Response::new(ServerCapabilities {
            cache_capabilities: Some(cache),
            execution_capabilities: Some(execution),
            deprecated_api_version: None,
            low_api_version: Some(semver(LOW_API_VERSION)),
            high_api_version: Some(semver(HIGH_API_VERSION)),
        }))
    }
}
