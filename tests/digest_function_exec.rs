//! Execute with the digest functions other than SHA-256 (BLAKE3, GITSHA1) end to end: the
//! action, command, input tree and outputs are all named by that function, and the result
//! is cached under its action digest.

mod common;

use common::TestServer;
use common::exec::{execution_client, start_plain};
use prost::Message;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::remote_execution as re;

async fn upload(server: &TestServer, function: DigestFunction, blobs: &[&[u8]]) {
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|b| re::batch_update_blobs_request::Request {
                    digest: Some(Digest::of(function, b).to_proto()),
                    data: bytes::Bytes::copy_from_slice(b),
                    compressor: 0,
                })
                .collect(),
            digest_function: function.to_proto() as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in response.responses {
        assert_eq!(r.status.unwrap().code, 0);
    }
}

async fn execute(
    server: &TestServer,
    function: DigestFunction,
    action: &re::Digest,
) -> re::ExecuteResponse {
    let mut stream = execution_client(server)
        .await
        .execute(re::ExecuteRequest {
            action_digest: Some(action.clone()),
            digest_function: function.to_proto() as i32,
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
    assert_eq!(meta.digest_function, function.to_proto() as i32);
    match op.result.unwrap() {
        rexd::proto::longrunning::operation::Result::Response(any) => {
            re::ExecuteResponse::decode(&any.value[..]).unwrap()
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_with_blake3_digests() {
    execute_with(DigestFunction::Blake3).await;
}

/// GITSHA1 hashes the size before the content, so every path that hashes (uploads, output
/// collection, staging checks) must know it up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_with_gitsha1_digests() {
    let digests = execute_with(DigestFunction::GitSha1).await;
    // `git hash-object` of the input file.
    assert_eq!(digests.hash, "02f92471ef0bc66184414c4b9795dc914756d463");
}

/// Runs `cat in.txt > out.txt` with every digest named by `function`; returns the output's.
async fn execute_with(function: DigestFunction) -> re::Digest {
    let name = |data: &[u8]| Digest::of(function, data).to_proto();
    let server = start_plain(|_| {}).await;
    let input = b"digest function input\n";
    let root = re::Directory {
        files: vec![re::FileNode {
            name: "in.txt".into(),
            digest: Some(name(input)),
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
        command_digest: Some(name(&command)),
        input_root_digest: Some(name(&root)),
        ..Default::default()
    }
    .encode_to_vec();
    upload(&server, function, &[input, &root, &command, &action]).await;

    let response = execute(&server, function, &name(&action)).await;
    assert_eq!(
        response.status.as_ref().map_or(0, |s| s.code),
        0,
        "{response:?}"
    );
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.output_files[0].digest, Some(name(input)));
    assert_eq!(result.stdout_digest, Some(name(b"")));

    // The output reads back under its own name, and the result is cached under it.
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![name(input)],
            digest_function: function.to_proto() as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&read.responses[0].data[..], input);
    let again = execute(&server, function, &name(&action)).await;
    assert!(again.cached_result);
    let ac = server
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(name(&action)),
            digest_function: function.to_proto() as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ac.exit_code, 0);
    // ByteStream names the function in the resource name.
    let d = name(input);
    let resource = format!("blobs/{}/{}/{}", function.name(), d.hash, d.size_bytes);
    let (data, end) = common::storage::bs_read_resource(&server, resource).await;
    end.unwrap();
    assert_eq!(data, input);
    d
}
