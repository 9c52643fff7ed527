//! The server's own store as a [`BlobSource`]: blobs the local disk lacks are brought from
//! the object-store tier first, and reads run on the blocking pool.

use std::collections::HashMap;

use bytes::Bytes;

use super::{BlobSource, MAX_DIRECTORIES};
use crate::digest::Digest;
use crate::error::Error;
use crate::offload::blocking;
use crate::proto::remote_execution::Directory;
use crate::storage::TieredStore;

/// Reads through both storage tiers.
pub struct StoreSource(pub TieredStore);

impl BlobSource for StoreSource {
    async fn read(&self, digest: &Digest) -> Result<Option<Bytes>, Error> {
        self.0.ensure_local(std::slice::from_ref(digest)).await;
        let (cas, digest) = (self.0.cas.clone(), *digest);
        blocking(move || cas.read(&digest)).await
    }

    async fn directories(&self, root: &Digest) -> Result<HashMap<Digest, Directory>, Error> {
        self.0.prefetch_tree(root, false).await?;
        let (cas, root) = (self.0.cas.clone(), *root);
        blocking(move || directories_in(&cas, &root)).await
    }
}

/// The directories under `root` that `cas` holds, at most [`MAX_DIRECTORIES`].
pub fn directories_in(
    cas: &crate::storage::Cas,
    root: &Digest,
) -> Result<HashMap<Digest, Directory>, Error> {
    let pages = match crate::storage::tree::tree_pages(cas, root, usize::MAX, usize::MAX, "") {
        Err(Error::Absent(_)) => return Ok(HashMap::new()),
        other => other?,
    };
    Ok(pages
        .into_iter()
        .flat_map(|p| p.directories)
        .take(MAX_DIRECTORIES)
        .map(|dir| {
            let bytes = prost::Message::encode_to_vec(&dir);
            (Digest::of(root.function(), &bytes), dir)
        })
        .collect())
}
