//! The state every part of the server shares: the configuration, the stores, the execution
//! engine and the upload registry. The gRPC adapters and the server read it; nothing below
//! them does.

use std::sync::Arc;

use crate::auth::{Caller, Role};
use crate::config::{InstanceConfig, Settings};
use crate::error::Error;
use crate::execution::Engine;
use crate::storage::{ActionCache, Cas, TieredStore};

/// What every service needs; cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// The configuration in force: as written, and in working form.
    pub settings: Arc<Settings>,
    pub cas: Cas,
    pub ac: ActionCache,
    /// Both storage tiers: the local disk and, when configured, the object store behind it.
    pub store: TieredStore,
    /// Remote Asset references and downloads.
    pub asset: crate::asset::Assets,
    /// The scheduler and workers; `None` when execution is disabled.
    pub execution: Option<Arc<Engine>>,
    /// ByteStream uploads in progress or interrupted, for QueryWriteStatus and resumption.
    pub uploads: Arc<crate::storage::uploads::Uploads>,
    /// Recent executions and cache hits, for the web UI and `rexd action`.
    pub history: crate::history::History,
    /// SplitBlob and SpliceBlob.
    pub chunker: crate::storage::chunking::Chunker,
}

impl Context {
    /// The configuration of a served instance, or INVALID_ARGUMENT naming the ones served.
    pub fn instance(&self, name: &str) -> Result<&InstanceConfig, Error> {
        self.settings.written.instance(name).ok_or_else(|| {
            let served: Vec<String> = self
                .settings
                .written
                .instances
                .iter()
                .map(|i| format!("{:?}", i.name))
                .collect();
            Error::BadInput(format!(
                "unknown instance name {name:?}; this server serves: {}",
                served.join(", ")
            ))
        })
    }

    /// The instance's configuration, if it is served and `caller` holds `role` on it.
    pub fn authorize(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
    ) -> Result<&InstanceConfig, Error> {
        let instance = self.instance(name)?;
        crate::auth::authorize(caller, name, role)?;
        Ok(instance)
    }

    /// Rejects blobs over the configured `limits.max_blob_size`.
    pub fn check_blob_size(&self, digest: &crate::digest::Digest) -> Result<(), Error> {
        let max = self.settings.written.limits.max_blob_size.as_u64();
        if max > 0 && digest.size() > max {
            return Err(Error::BadInput(format!(
                "blob {digest} is larger than this server's max_blob_size of {max} bytes"
            )));
        }
        Ok(())
    }

    /// Largest total of blob bytes in one batch call.
    pub fn max_batch_bytes(&self) -> u64 {
        self.settings.written.storage.max_batch_total_size.as_u64()
    }
}
