//! A server's CAS, read over REAPI, as a [`BlobSource`]: blobs are fetched into a local CAS
//! (the rerun's working store) and read from there, so an action's inputs travel once.

use std::collections::HashMap;

use bytes::Bytes;

use crate::bot::remote::RemoteCas;
use crate::digest::Digest;
use crate::error::Error;
use crate::inspect::BlobSource;
use crate::offload::blocking;
use crate::proto::remote_execution::Directory;
use crate::storage::Cas;

pub struct ServerSource {
    pub remote: RemoteCas,
    pub local: Cas,
}

impl BlobSource for ServerSource {
    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        match self
            .remote
            .fetch_missing(&self.local, std::slice::from_ref(digest))
            .await
        {
            Ok(_) => {}
            Err(Error::MissingBlobs(_) | Error::Absent(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        let (cas, digest) = (self.local.clone(), *digest);
        blocking(move || cas.read(&digest)).await
    }

    async fn directories(&self, root: &Digest) -> Result<HashMap<Digest, Directory>, Error> {
        // A tree the server lacks (in part) is shown as far as it goes.
        if let Err(e) = self.remote.fetch_tree(&self.local, root).await {
            tracing::debug!(error = %e, "GetTree failed");
        }
        let (cas, root) = (self.local.clone(), *root);
        blocking(move || crate::inspect::local::directories_in(&cas, &root)).await
    }
}
