//! ByteStream reads across the tiers. A locally stored blob streams from its file. One that
//! is only in the bucket:
//! - read whole and uncompressed, streams from the GET to the client while it fills the
//!   local disk (a concurrent reader of the same blob waits for that fill and reads the
//!   local copy, so one GET serves both);
//! - read as a range, becomes a ranged GET;
//! - read compressed, is filled first and then compressed from the local copy.

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::TieredStore;
use crate::digest::Digest;
use crate::error::Error;
use crate::resource::Compression;
use crate::storage::stream;

pub type Chunks = BoxStream<'static, Result<bytes::Bytes, Error>>;

impl TieredStore {
    /// Streams `limit` bytes of `digest` from `offset`; NOT_FOUND if neither tier has it.
    pub async fn read(
        &self,
        digest: Digest,
        offset: u64,
        limit: u64,
        compression: Compression,
    ) -> Result<Chunks, Error> {
        let local = || stream::read(self.cas.clone(), digest, offset, limit, compression);
        let Some(tier) = &self.tier else {
            return Ok(local().await?.boxed());
        };
        if self.cas.is_present(&digest).await? {
            metrics::counter!("rexd_tier_reads_total", "tier" => "local").increment(1);
            self.touch(tier.remote.keys.blob(&digest));
            return Ok(local().await?.boxed());
        }
        let remote = &tier.remote;
        if limit == 0 {
            // An empty range of a blob the bucket holds; a GET cannot ask for no bytes.
            return match self.in_bucket(std::slice::from_ref(&digest)).await[0] {
                true => Ok(futures::stream::empty().boxed()),
                false => Err(absent(&digest)),
            };
        }
        let whole = offset == 0 && limit == digest.size();
        if whole && compression == Compression::Identity {
            let (tx, rx) = mpsc::channel(2);
            let (fill, tapped) = remote.start_fill(&self.cas, digest, Some(tx));
            if tapped {
                return Ok(ReceiverStream::new(rx).boxed());
            }
            return match fill.await? {
                true => Ok(local().await?.boxed()),
                false => Err(absent(&digest)),
            };
        }
        if compression != Compression::Identity {
            if !remote.fetch_into(&self.cas, digest).await? {
                return Err(absent(&digest));
            }
            return Ok(local().await?.boxed());
        }
        // A range cannot be checked against the digest; the whole blob is filled (and
        // checked) in the background so later reads are local.
        let range = offset..offset + limit;
        match remote
            .get_stream(&remote.keys.blob(&digest), Some(range))
            .await?
        {
            Some(chunks) => {
                let _ = remote.start_fill(&self.cas, digest, None);
                Ok(chunks)
            }
            None => Err(absent(&digest)),
        }
    }
}

fn absent(digest: &Digest) -> Error {
    Error::Absent(format!("blob {digest} is not in the CAS"))
}
