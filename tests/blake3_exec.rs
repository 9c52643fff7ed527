//! Execute with BLAKE3 digests end to end: the action, command, input tree and outputs are
//! all named by BLAKE3, and the result is cached under the BLAKE3 action digest.

mod common;

use common::TestServer;
use common::exec::{execution_client, start_plain};
use prost::Message;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::remote_execution as re;

fn blake3(data: &[u8]) -> re::Digest {
    Digest::of(DigestFunction::Blake3, data).to_proto()
}

async fn upload(server: &TestServer, blobs: &[&[u8]]) {
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|b| re::batch_update_blobs_request::Request {
                    digest: Some(blake3(b)),
                    data: bytes::Bytes::copy_from_slice(b),
                    compressor: 0,
                })
                .collect(),
            digest_function: re::digest_function::Value::Blake3 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in response.responses {
        assert_eq!(r.status.unwrap().code, 0);
    }
}

async fn execute(server: &TestServer, action: &re::Digest) -> re::ExecuteResponse {
    let mut stream = execution_client(server)
        .await
        .execute(re::ExecuteRequest {
            action_digest: Some(action.clone()),
            digest_function: re::digest_function::Value::Blake3 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let op = last.expect("an operation");
    assert!(op.done);
    let meta = re::ExecuteOperationMetadata::decode(&op.metadata.unwrap().value[..]).unwrap();
    assert_eq!(
        meta.digest_function,
        re::digest_function::Value::Blake3 as i32
    );
    match op.result.unwrap() {
        rexd::proto::longrunning::operation::Result::Response(any) => {
            re::ExecuteResponse::decode(&any.value[..]).unwrap()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_with_blake3_digests() {
    let server = start_plain(|_| {}).await;
    let input = b"blake3 input\n";
    let root = re::Directory {
        files: vec![re::FileNode {
            name: "in.txt".into(),
            digest: Some(blake3(input)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    #[allow(deprecated)]
    let command = re::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), "cat in.txt > out.txt".into()],
        output_files: vec!["out.txt".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let action = re::Action {
        command_digest: Some(blake3(&command)),
        input_root_digest: Some(blake3(&root)),
        ..Default::default()
    }
    .encode_to_vec();
    upload(&server, &[input, &root, &command, &action]).await;

    let response = execute(&server, &blake3(&action)).await;
    assert_eq!(
        response.status.as_ref().map_or(0, |s| s.code),
        0,
        "{response:?}"
    );
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files[0].digest, Some(blake3(input)));
    assert_eq!(result.stdout_digest, Some(blake3(b"")));

    // The output reads back under its BLAKE3 name, and the result is cached under BLAKE3.
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![blake3(input)],
            digest_function: re::digest_function::Value::Blake3 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&read.responses[0].data[..], input);
    let again = execute(&server, &blake3(&action)).await;
    assert!(again.cached_result);
    let ac = server
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(blake3(&action)),
            digest_function: re::digest_function::Value::Blake3 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ac.exit_code, 0);
}
