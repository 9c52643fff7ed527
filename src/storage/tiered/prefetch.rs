//! Bringing what an action or a tree names from the bucket to the local disk before the
//! blocking code that reads it runs: the Action, its Command, and its input tree level by
//! level (each level's Directories in one parallel batch, then the files). What is in
//! neither tier is left for that code to report as missing.

use std::collections::HashSet;

use super::TieredStore;
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::remote_execution::{Action, Directory};
use crate::storage::tree::read_message;

impl TieredStore {
    /// Fetches the action, its command and its whole input tree where missing locally.
    pub async fn prefetch_action(&self, action_digest: &Digest) -> Result<(), Error> {
        if self.tier.is_none() {
            return Ok(());
        }
        self.ensure_local(std::slice::from_ref(action_digest)).await;
        let (cas, d) = (self.cas.clone(), *action_digest);
        let Ok(Some(action)) = blocking(move || read_message::<Action>(&cas, &d, "action")).await
        else {
            return Ok(()); // Absent or garbled: the loader says which.
        };
        let function = action_digest.function();
        let parts = [&action.command_digest, &action.input_root_digest]
            .into_iter()
            .flatten()
            .filter_map(|d| Digest::from_proto(function, d).ok())
            .collect::<Vec<_>>();
        self.ensure_local(&parts).await;
        if let Some(root) = action
            .input_root_digest
            .as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
        {
            self.prefetch_tree(&root, true).await?;
        }
        Ok(())
    }

    /// Fetches the Directory blobs under `root` where missing locally, and their files too
    /// if `with_files`.
    pub async fn prefetch_tree(&self, root: &Digest, with_files: bool) -> Result<(), Error> {
        if self.tier.is_none() {
            return Ok(());
        }
        let function = root.function();
        let mut seen = HashSet::from([*root]);
        let mut level = vec![*root];
        while !level.is_empty() {
            self.ensure_local(&level).await;
            let (cas, dirs) = (self.cas.clone(), level.clone());
            let decoded = blocking(move || {
                Ok(dirs
                    .iter()
                    .filter_map(|d| {
                        read_message::<Directory>(&cas, d, "directory")
                            .ok()
                            .flatten()
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
            let mut files = Vec::new();
            level = Vec::new();
            for dir in decoded {
                for f in &dir.files {
                    if let Some(d) = f
                        .digest
                        .as_ref()
                        .and_then(|d| Digest::from_proto(function, d).ok())
                    {
                        files.push(d);
                    }
                }
                for child in &dir.directories {
                    if let Some(d) = child
                        .digest
                        .as_ref()
                        .and_then(|d| Digest::from_proto(function, d).ok())
                    {
                        if seen.insert(d) {
                            level.push(d);
                        }
                    }
                }
            }
            if with_files {
                files.sort_unstable_by_key(|d| (d.hash_hex(), d.size()));
                files.dedup();
                self.ensure_local(&files).await;
            }
        }
        Ok(())
    }
}
