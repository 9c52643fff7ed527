//! SplitBlob and SpliceBlob with the object-store tier (a real Garage): the chunks a split
//! stores reach the bucket, and a second frontend with an empty disk splits and splices from
//! what only the bucket holds.

mod common;

use bytesize::ByteSize;
use common::garage::Garage;
use common::storage::bs_write;
use common::{TestServer, digest, pseudo_random};
use object_store::ObjectStore;
use object_store::path::Path;
use rexd::proto::remote_execution as re;

async fn frontend(garage: &Garage, prefix: &str) -> TestServer {
    let remote = garage.remote_config(prefix);
    TestServer::start_with(move |c| {
        c.storage.remote = Some(remote);
        c.storage.chunk_average_size = ByteSize::kib(16);
    })
    .await
}

fn key(prefix: &str, d: &re::Digest) -> Path {
    Path::from(format!("{prefix}/cas/sha256/{}-{}", d.hash, d.size_bytes))
}

async fn split(server: &TestServer, data: &[u8]) -> Vec<re::Digest> {
    server
        .cas()
        .await
        .split_blob(re::SplitBlobRequest {
            blob_digest: Some(digest(data)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .chunk_digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_reach_the_bucket_and_serve_a_second_frontend() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let first = frontend(&garage, "chunks").await;
    let blob = pseudo_random(1024 * 1024, 3);
    bs_write(&first, &blob).await.unwrap();
    let chunks = split(&first, &blob).await;
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    let bucket = garage.client();
    for chunk in &chunks {
        bucket
            .head(&key("chunks", chunk))
            .await
            .unwrap_or_else(|e| panic!("chunk {} is not in the bucket: {e}", chunk.hash));
    }

    // A frontend whose disk holds nothing: the blob comes from the bucket to be split, and
    // the same cut comes out.
    let second = frontend(&garage, "chunks").await;
    assert_eq!(split(&second, &blob).await, chunks);

    // A third, empty again, splices a new blob from chunks only the bucket holds.
    let third = frontend(&garage, "chunks").await;
    let reversed: Vec<re::Digest> = chunks.iter().rev().cloned().collect();
    let spliced: Vec<u8> = {
        let mut offsets = Vec::new();
        let mut at = 0usize;
        for c in &chunks {
            offsets.push((at, c.size_bytes as usize));
            at += c.size_bytes as usize;
        }
        offsets
            .iter()
            .rev()
            .flat_map(|(o, n)| blob[*o..*o + *n].to_vec())
            .collect()
    };
    let reply = third
        .cas()
        .await
        .splice_blob(re::SpliceBlobRequest {
            blob_digest: Some(digest(&spliced)),
            chunk_digests: reversed,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.blob_digest, Some(digest(&spliced)));
    let meta = bucket
        .head(&key("chunks", &digest(&spliced)))
        .await
        .unwrap();
    assert_eq!(
        meta.size,
        spliced.len() as u64,
        "the spliced blob is in the bucket"
    );
}
