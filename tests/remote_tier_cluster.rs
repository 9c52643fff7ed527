//! The object-store tier on a distributed store: a 3-node Garage cluster, one node per host
//! (network namespaces this test makes, routed through a fourth host), keeping every object
//! on all three. rexd frontends on that fourth host store blobs, one Garage node is killed,
//! and rexd goes on storing, and a new frontend with an empty disk serves everything.
//!
//! Needs root, iproute2 and Garage; skipped loudly without them (fails instead when `CI`
//! is set).

mod common;

use common::child::Rexd;
use common::garage::{BUCKET, Garage};
use common::netns::Hosts;
use common::storage::MIB;
use common::{digest, pseudo_random};
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::bytestream::{ReadRequest, WriteRequest};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

fn config(node: &Garage) -> String {
    format!(
        "[storage]\nfsync = true\n\
         [storage.remote]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"cluster\"\n\
         region = \"garage\"\ncredentials_file = \"{}\"\n\
         request_timeout_secs = 10\nconnect_timeout_secs = 2\nmax_retries = 1\n\
         [execution]\nenabled = false\n",
        node.endpoint(),
        node.credentials_path().display()
    )
}

async fn upload(channel: Channel, data: &[u8]) {
    let d = digest(data);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash,
        d.size_bytes
    );
    let requests: Vec<WriteRequest> = data
        .chunks(MIB)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * MIB) as i64,
            finish_write: (i + 1) * MIB >= data.len(),
            data: piece.to_vec().into(),
        })
        .collect();
    ByteStreamClient::new(channel)
        .write(futures::stream::iter(requests))
        .await
        .expect("upload acknowledged");
}

async fn read(channel: Channel, data: &[u8]) -> Vec<u8> {
    let d = digest(data);
    let mut stream = ByteStreamClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.extend_from_slice(&msg.data);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garage_cluster_with_a_node_down_keeps_serving() {
    if common::garage::garage_or_skip().is_none() {
        return;
    }
    let Some(hosts) = Hosts::create(3) else {
        return;
    };
    hosts.route_between_workers();
    let mut nodes = Garage::start_cluster(&hosts).unwrap();
    let work = tempfile::tempdir().unwrap();
    let config_path = work.path().join("rexd.toml");
    std::fs::write(&config_path, config(&nodes[0])).unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = work.path().join("rexd.log");
    let a = Rexd::start_in_netns(&hosts.server, 8981, &config_path, data_a.path(), &log).await;

    let before: Vec<Vec<u8>> = (0..3)
        .map(|i| pseudo_random(MIB + i * 1000, i as u64))
        .collect();
    for blob in &before {
        upload(Hosts::channel_into(&hosts.server, 8981).await, blob).await;
    }
    nodes[2].stop();
    let after: Vec<Vec<u8>> = (0..3)
        .map(|i| pseudo_random(2 * MIB + i * 1000, 100 + i as u64))
        .collect();
    for blob in &after {
        upload(Hosts::channel_into(&hosts.server, 8981).await, blob).await;
    }
    drop(a);

    // A new frontend, empty disk, while the node is still down.
    let _b = Rexd::start_in_netns(&hosts.server, 8982, &config_path, data_b.path(), &log).await;
    let all: Vec<&Vec<u8>> = before.iter().chain(&after).collect();
    let missing =
        ContentAddressableStorageClient::new(Hosts::channel_into(&hosts.server, 8982).await)
            .find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: all.iter().map(|b| digest(b)).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
    assert!(
        missing.is_empty(),
        "missing with a node down: {missing:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for blob in all {
        let got = read(Hosts::channel_into(&hosts.server, 8982).await, blob).await;
        assert!(&got == blob, "a blob read back wrong with a node down");
    }
}
