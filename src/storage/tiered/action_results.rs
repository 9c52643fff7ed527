//! Action results across the tiers. An entry is served only while every blob it names is
//! in one tier or the other; an entry another frontend wrote is read from the bucket and
//! kept locally from then on.

use prost::Message;

use super::TieredStore;
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::remote_execution::ActionResult;
use crate::storage::action_cache::lookup_complete;
use crate::storage::tree;

impl TieredStore {
    /// The stored result for `digest`, if every blob it names is still stored.
    pub async fn action_result(
        &self,
        instance: &str,
        digest: &Digest,
    ) -> Result<Option<ActionResult>, Error> {
        let Some(tier) = &self.tier else {
            let (cas, ac, instance, digest) = (
                self.cas.clone(),
                self.ac.clone(),
                instance.to_string(),
                *digest,
            );
            return blocking(move || lookup_complete(&cas, &ac, &instance, &digest)).await;
        };
        let (ac, inst, d) = (self.ac.clone(), instance.to_string(), *digest);
        let local = blocking(move || ac.get(&inst, &d)).await?;
        let key = tier.remote.keys.action_result(instance, digest);
        let (result, from_bucket) = match local {
            Some(result) => (result, false),
            None => match tier.remote.get_bytes(&key).await {
                Ok(Some(data)) => match ActionResult::decode(&data[..]) {
                    Ok(result) => (result, true),
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "action result in the bucket does not decode; ignoring it");
                        return Ok(None);
                    }
                },
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::debug!(%digest, error = %e, "cannot read the bucket's action cache; a miss");
                    return Ok(None);
                }
            },
        };
        if !self.is_complete(digest, &result).await? {
            tracing::debug!(%digest, "action result incomplete in both tiers; not served");
            return Ok(None);
        }
        if from_bucket {
            let (ac, inst, d, stored) = (
                self.ac.clone(),
                instance.to_string(),
                *digest,
                result.clone(),
            );
            blocking(move || ac.put(&inst, &d, &stored)).await?;
        } else {
            self.touch(key);
        }
        Ok(Some(result))
    }

    /// The blobs `result` names that neither tier holds.
    pub async fn missing_of_result(
        &self,
        digest: &Digest,
        result: &ActionResult,
    ) -> Result<Vec<Digest>, Error> {
        let function = digest.function();
        if self.tier.is_none() {
            let (cas, result) = (self.cas.clone(), result.clone());
            return blocking(move || tree::missing_blobs_of_result(&cas, function, &result)).await;
        }
        let named_of = |result: ActionResult| {
            let cas = self.cas.clone();
            blocking(move || tree::blobs_of_result(&cas, function, &result))
        };
        let (mut named, unreadable) = named_of(result.clone()).await?;
        let mut missing = Vec::new();
        if !unreadable.is_empty() {
            // Output trees stored only in the bucket: bring them here, then list their files.
            missing = self.ensure_local(&unreadable).await;
            if missing.len() < unreadable.len() {
                let (again, still) = named_of(result.clone()).await?;
                named = again;
                missing = still;
            }
        }
        missing.extend(self.find_missing(&named).await);
        Ok(missing)
    }

    async fn is_complete(&self, digest: &Digest, result: &ActionResult) -> Result<bool, Error> {
        Ok(self.missing_of_result(digest, result).await?.is_empty())
    }

    /// Stores a result in both tiers, after making the blobs it names durable in the bucket
    /// (write-through), so no frontend ever sees an entry whose outputs are not there.
    pub async fn put_action_result(
        &self,
        instance: &str,
        digest: &Digest,
        result: &ActionResult,
    ) -> Result<(), Error> {
        if let Some(tier) = &self.tier {
            let function = digest.function();
            let (cas, stored) = (self.cas.clone(), result.clone());
            let (named, _) =
                blocking(move || tree::blobs_of_result(&cas, function, &stored)).await?;
            self.replicate(&named).await?;
            let key = tier.remote.keys.action_result(instance, digest);
            self.replicate_object(key, result.encode_to_vec().into())
                .await?;
        }
        let (ac, inst, d, stored) = (
            self.ac.clone(),
            instance.to_string(),
            *digest,
            result.clone(),
        );
        blocking(move || ac.put(&inst, &d, &stored)).await
    }
}
