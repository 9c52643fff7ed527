//! One lease on the worker: fetch the action and the inputs it lacks into the local CAS,
//! load and check it as the server would, run it in a slot, upload its outputs, and build
//! the result the lease reports.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::remote::RemoteCas;
use crate::config::InstanceConfig;
use crate::digest::Digest;
use crate::error::Error;
use crate::execution::bots::lease;
use crate::execution::input_tree::DirectoryCache;
use crate::execution::spec::{self, Preloaded, SpecLimits};
use crate::execution::warm::WarmSandbox;
use crate::execution::worker::Slots;
use crate::offload::blocking;
use crate::proto::remote_execution::{Action, ActionResult, Command, ExecutedActionMetadata};
use crate::proto::remoteworkers::{Lease, LeaseState};
use prost::Message;

/// Rounds of "load, fetch what is missing" before a lease is given up: each round reveals
/// one more level of the input tree when GetTree could not provide it.
const MAX_FETCH_ROUNDS: usize = 64;
/// Largest Command read into memory with the lease's first round trip; a larger one goes
/// through the local CAS like any blob.
const MAX_INLINE_COMMAND: u64 = 1 << 20;

/// What every lease on this worker uses.
pub struct Runner {
    pub bot_id: String,
    pub slots: Slots,
    pub remote: RemoteCas,
    pub instance: InstanceConfig,
    pub limits: SpecLimits,
    pub directories: DirectoryCache,
}

/// A slot of this worker and its long-lived sandbox, lent to one lease at a time.
pub struct Slot {
    pub index: usize,
    pub warm: Option<WarmSandbox>,
}

impl Runner {
    /// Runs the lease in `slot` and returns it COMPLETED, with its result and status.
    pub async fn run(
        self: &Arc<Self>,
        lease: &Lease,
        slot: &mut Slot,
        cancel: &CancellationToken,
    ) -> Lease {
        let mut metadata = ExecutedActionMetadata {
            worker: self.bot_id.clone(),
            worker_start_timestamp: Some(SystemTime::now().into()),
            ..Default::default()
        };
        let (result, error) = match self.attempt(lease, slot, cancel, &mut metadata).await {
            Ok(done) => done,
            Err(e) => (ActionResult::default(), Some(e)),
        };
        let mut result = result;
        metadata.worker_completed_timestamp = Some(SystemTime::now().into());
        result.execution_metadata = Some(metadata);
        if let Some(e) = &error {
            tracing::warn!(lease = %lease.id, error = %e, "lease ended with an error");
        }
        Lease {
            id: lease.id.clone(),
            state: LeaseState::Completed as i32,
            result: Some(lease::encode_result(&result)),
            status: Some(match &error {
                Some(e) => lease::error_status(e),
                None => crate::error::ok_status(),
            }),
            ..Default::default()
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        lease: &Lease,
        slot: &mut Slot,
        cancel: &CancellationToken,
        metadata: &mut ExecutedActionMetadata,
    ) -> Result<(ActionResult, Option<Error>), Error> {
        let (action_digest, inline) = lease::decode_payload(lease)?;
        metadata.input_fetch_start_timestamp = Some(SystemTime::now().into());
        let spec = self.load(action_digest, inline).await?;
        // Inputs stay in the local CAS while the action runs.
        let _inputs = self.slots.cas.lease(spec.inputs.files.clone());
        let fetch_started = metadata.input_fetch_start_timestamp;
        let outcome = self
            .slots
            .run(slot.index, &spec, cancel, metadata, &mut slot.warm)
            .await;
        // The slot's phases are local; the lease's fetch and upload phases also cover the
        // transfers from and to the server.
        metadata.input_fetch_start_timestamp = fetch_started;
        let function = action_digest.function();
        let (cas, result) = (self.slots.cas.clone(), outcome.result.clone());
        let (named, _) =
            blocking(move || crate::storage::tree::blobs_of_result(&cas, function, &result))
                .await?;
        let sent = self.remote.upload_missing(&self.slots.cas, &named).await?;
        metadata.output_upload_completed_timestamp = Some(SystemTime::now().into());
        tracing::info!(lease = %lease.id, action = %action_digest, exit_code = outcome.result.exit_code, uploaded_blobs = sent.blobs, uploaded_bytes = sent.bytes, "lease ran");
        Ok((outcome.result, outcome.error))
    }

    /// Loads the action from the local CAS, fetching from the server whatever is missing:
    /// the Action, then its Command and every Directory (one GetTree) at once, then the
    /// files; further rounds only for what those left out.
    async fn load(
        self: &Arc<Self>,
        action_digest: Digest,
        inline: Option<Action>,
    ) -> Result<spec::ActionSpec, Error> {
        let (preloaded, mut fetched, mut tree_fetched) =
            self.prefetch(action_digest, inline).await?;
        // Everything asked of the server for this action, to tell fetched input files from
        // those the local cache held.
        let mut requested = std::collections::HashSet::new();
        for _ in 0..MAX_FETCH_ROUNDS {
            let (this, known) = (self.clone(), preloaded.clone());
            let loaded = blocking(move || {
                spec::load_with(
                    &this.slots.cas,
                    &this.directories,
                    &this.instance,
                    &this.slots.sandbox,
                    action_digest,
                    known,
                    &this.limits,
                )
            })
            .await;
            let missing = match loaded {
                Ok(spec) => {
                    let absent = self.slots.cas.find_missing(&spec.inputs.files);
                    if absent.is_empty() {
                        let files = spec.inputs.files.len() as u64;
                        let files_fetched = spec
                            .inputs
                            .files
                            .iter()
                            .filter(|f| requested.contains(*f))
                            .count() as u64;
                        tracing::debug!(action = %action_digest, blobs = fetched.blobs, bytes = fetched.bytes, "inputs fetched");
                        metrics::counter!("rexd_worker_fetched_blobs_total")
                            .increment(fetched.blobs);
                        metrics::counter!("rexd_worker_fetched_bytes_total")
                            .increment(fetched.bytes);
                        metrics::counter!("rexd_worker_cache_hits_total")
                            .increment(files.saturating_sub(files_fetched));
                        metrics::counter!("rexd_worker_cache_misses_total")
                            .increment(files_fetched);
                        return Ok(spec);
                    }
                    absent
                }
                Err(Error::MissingBlobs(missing)) => {
                    let root = preloaded
                        .action
                        .as_ref()
                        .and_then(|a| a.input_root_digest.as_ref());
                    if !tree_fetched && let Some(root) = root {
                        tree_fetched = true;
                        let root = Digest::from_proto(action_digest.function(), root)?;
                        self.remote.fetch_tree(&self.slots.cas, &root).await?;
                    }
                    missing
                }
                Err(e) => return Err(e),
            };
            let got = self.remote.fetch_missing(&self.slots.cas, &missing).await?;
            requested.extend(missing);
            fetched.blobs += got.blobs;
            fetched.bytes += got.bytes;
        }
        Err(Error::Upstream(format!(
            "the inputs of {action_digest} were still incomplete after {MAX_FETCH_ROUNDS} fetches"
        )))
    }

    /// Brings what the action needs before its files: the Action (unless the lease carried
    /// it), then its Command and input tree together. The Action and Command stay in memory,
    /// off the local CAS and its synced writes. One round trip for a new action over a known
    /// tree when the lease carries the Action, two when it carries only its digest. Returns
    /// them, what it fetched, and whether it fetched the tree.
    async fn prefetch(
        self: &Arc<Self>,
        action_digest: Digest,
        inline: Option<Action>,
    ) -> Result<(Preloaded, super::remote::Transferred, bool), Error> {
        let cas = &self.slots.cas;
        let mut fetched = super::remote::Transferred::default();
        let action = match inline {
            Some(action) => action,
            None => {
                fetched = self.remote.fetch_missing(cas, &[action_digest]).await?;
                let local = cas.clone();
                match blocking(move || read_action(&local, &action_digest)).await? {
                    Some(action) => action,
                    None => return Ok((Preloaded::default(), fetched, false)),
                }
            }
        };
        let function = action_digest.function();
        let part = |d: Option<&crate::proto::remote_execution::Digest>| {
            d.map(|d| Digest::from_proto(function, d)).transpose()
        };
        // A Command too large for one batch, or already local, is left to the loader.
        let command = part(action.command_digest.as_ref())?
            .filter(|c| c.size() <= MAX_INLINE_COMMAND && !cas.contains(c));
        let root = part(action.input_root_digest.as_ref())?.filter(|r| !cas.contains(r));
        let tree = async {
            match &root {
                Some(root) => self.remote.fetch_tree(cas, root).await,
                None => Ok(()),
            }
        };
        let read = async {
            match &command {
                Some(digest) => self.remote.read_small(digest).await.map(Some),
                None => Ok(None),
            }
        };
        let (read, tree) = futures::join!(read, tree);
        tree?;
        let command = match read? {
            Some(bytes) => {
                fetched.blobs += 1;
                fetched.bytes += bytes.len() as u64;
                Some(Command::decode(bytes.as_slice()).map_err(|e| {
                    Error::BadInput(format!(
                        "command of {action_digest} is not a valid proto: {e}"
                    ))
                })?)
            }
            None => None,
        };
        let preloaded = Preloaded {
            action: Some(action),
            command,
        };
        Ok((preloaded, fetched, root.is_some()))
    }
}

/// The Action, if it is in the local CAS.
fn read_action(
    cas: &crate::storage::Cas,
    action_digest: &Digest,
) -> Result<Option<crate::proto::remote_execution::Action>, Error> {
    crate::storage::tree::read_message(cas, action_digest, "action")
}
