//! Compressed batches as REAPI v2.12 words them: BatchReadBlobs answers in IDENTITY or one of
//! the request's `acceptable_compressors`, and BatchUpdateBlobs takes entries in IDENTITY or a
//! compressor from `supported_batch_update_compressors`, refusing others per entry.

mod common;

use common::{TestServer, digest, expect_rpc_status, upload_blobs};
use rexd::proto::remote_execution as re;
use tonic::Code;

const ZSTD: i32 = re::compressor::Value::Zstd as i32;
const IDENTITY: i32 = re::compressor::Value::Identity as i32;

async fn read(
    server: &TestServer,
    blobs: &[&[u8]],
    acceptable: Vec<i32>,
) -> Vec<re::batch_read_blobs_response::Response> {
    server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: blobs.iter().map(|b| digest(b)).collect(),
            acceptable_compressors: acceptable,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_use_zstd_only_when_the_client_accepts_it() {
    let server = TestServer::start().await;
    let text = "a line of build output that compresses well\n".repeat(200);
    let small = b"tiny";
    upload_blobs(&server, &[text.as_bytes(), small]).await;

    let r = read(&server, &[text.as_bytes(), small], vec![ZSTD]).await;
    assert_eq!(
        r[0].compressor, ZSTD,
        "a compressible blob is sent compressed"
    );
    assert!(r[0].data.len() < text.len() / 4);
    assert_eq!(
        zstd::stream::decode_all(&r[0].data[..]).unwrap(),
        text.as_bytes()
    );
    assert_eq!(r[1].compressor, IDENTITY, "a tiny blob is not worth it");
    assert_eq!(&r[1].data[..], small);

    let r = read(&server, &[text.as_bytes()], vec![]).await;
    assert_eq!(
        r[0].compressor, IDENTITY,
        "IDENTITY unless zstd is acceptable"
    );
    assert_eq!(&r[0].data[..], text.as_bytes());
    let deflate_only = vec![re::compressor::Value::Deflate as i32];
    let r = read(&server, &[text.as_bytes()], deflate_only).await;
    assert_eq!(
        r[0].compressor, IDENTITY,
        "never a compressor the client did not list"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_updates_take_advertised_compressors_only() {
    let server = TestServer::start().await;
    let caps = common::server_capabilities(&server)
        .await
        .cache_capabilities
        .unwrap();
    assert_eq!(caps.supported_batch_update_compressors, vec![ZSTD]);

    let packed = b"packed with zstd".to_vec();
    let deflated = b"deflate is not offered".to_vec();
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![
                re::batch_update_blobs_request::Request {
                    digest: Some(digest(&packed)),
                    data: zstd::bulk::compress(&packed, 3).unwrap().into(),
                    compressor: ZSTD,
                },
                re::batch_update_blobs_request::Request {
                    digest: Some(digest(&deflated)),
                    data: deflated.clone().into(),
                    compressor: re::compressor::Value::Deflate as i32,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(response.responses[0].status.as_ref(), Code::Ok, &[]);
    expect_rpc_status(
        response.responses[1].status.as_ref(),
        Code::InvalidArgument,
        &["compressor 2 is not supported", "IDENTITY or ZSTD"],
    );
    assert!(common::is_stored(&server, &packed).await);
    assert!(!common::is_stored(&server, &deflated).await);
}
