//! ActionCache over the wire: store and fetch, the completeness guarantee (a result is served
//! only while every blob it names is in the CAS), inlining, policy and persistence.

mod common;

use common::{TestServer, blob_file, digest, expect_status, is_stored, upload_blobs};
use prost::Message;
use rexd::config::InstanceConfig;
use rexd::proto::remote_execution as re;
use rexd::proto::rpc;
use tonic::{Code, Status};

fn output_file(path: &str, data: &[u8]) -> re::OutputFile {
    re::OutputFile {
        path: path.into(),
        digest: Some(digest(data)),
        ..Default::default()
    }
}

async fn update(
    server: &TestServer,
    instance: &str,
    action: &[u8],
    result: re::ActionResult,
) -> Result<re::ActionResult, Status> {
    server
        .action_cache()
        .await
        .update_action_result(re::UpdateActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(digest(action)),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn get(
    server: &TestServer,
    instance: &str,
    action: &[u8],
) -> Result<re::ActionResult, Status> {
    get_with(
        server,
        re::GetActionResultRequest {
            instance_name: instance.into(),
            action_digest: Some(digest(action)),
            ..Default::default()
        },
    )
    .await
}

async fn get_with(
    server: &TestServer,
    request: re::GetActionResultRequest,
) -> Result<re::ActionResult, Status> {
    server
        .action_cache()
        .await
        .get_action_result(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A result with an output file, stdout and stderr, all uploaded.
async fn stored_result(server: &TestServer) -> re::ActionResult {
    upload_blobs(server, &[b"out file", b"the stdout", b"the stderr"]).await;
    re::ActionResult {
        output_files: vec![output_file("out/file", b"out file")],
        exit_code: 0,
        stdout_digest: Some(digest(b"the stdout")),
        stderr_digest: Some(digest(b"the stderr")),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_then_get() {
    let server = TestServer::start().await;
    let result = stored_result(&server).await;
    let echoed = update(&server, "", b"action 1", result.clone())
        .await
        .unwrap();
    assert_eq!(echoed, result);
    assert_eq!(get(&server, "", b"action 1").await.unwrap(), result);

    // A second update replaces the entry.
    let newer = re::ActionResult {
        exit_code: 1,
        ..result.clone()
    };
    update(&server, "", b"action 1", newer.clone())
        .await
        .unwrap();
    assert_eq!(get(&server, "", b"action 1").await.unwrap(), newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_is_not_found() {
    let server = TestServer::start().await;
    let action = digest(b"never run");
    let result = get(&server, "", b"never run").await;
    expect_status(result, Code::NotFound, &["no action result", &action.hash]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_per_instance() {
    let server = TestServer::start_with(|c| c.instances.push(InstanceConfig::named("other"))).await;
    let result = stored_result(&server).await;
    update(&server, "", b"action", result.clone())
        .await
        .unwrap();
    expect_status(
        get(&server, "other", b"action").await,
        Code::NotFound,
        &["no action result"],
    );
    update(
        &server,
        "other",
        b"action",
        re::ActionResult {
            exit_code: 7,
            ..result.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(get(&server, "", b"action").await.unwrap(), result);
    assert_eq!(get(&server, "other", b"action").await.unwrap().exit_code, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_refuses_results_naming_missing_blobs() {
    let server = TestServer::start().await;
    upload_blobs(&server, &[b"present"]).await;
    let absent = digest(b"absent stdout");
    let result = re::ActionResult {
        output_files: vec![output_file("present", b"present")],
        stdout_digest: Some(absent.clone()),
        ..Default::default()
    };
    let status = expect_status(
        update(&server, "", b"action", result).await,
        Code::FailedPrecondition,
        &["missing from the CAS", &absent.hash],
    );
    // The missing blobs are listed in a google.rpc.PreconditionFailure, as REAPI asks.
    let details = rpc::Status::decode(status.details()).expect("a google.rpc.Status in details");
    let failure = details
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.PreconditionFailure"))
        .expect("a PreconditionFailure detail");
    let failure = rpc::PreconditionFailure::decode(&failure.value[..]).unwrap();
    assert_eq!(failure.violations.len(), 1);
    assert_eq!(failure.violations[0].r#type, "MISSING");
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", absent.hash, absent.size_bytes)
    );

    expect_status(
        get(&server, "", b"action").await,
        Code::NotFound,
        &["no action result"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument() {
    let server = TestServer::start().await;
    let mut ac = server.action_cache().await;
    let result = ac
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(digest(b"a")),
            action_result: None,
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["action_result is missing"]);
    let result = ac
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: None,
            action_result: Some(re::ActionResult::default()),
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["action digest is missing"]);
    let bad_file = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "x".into(),
            digest: Some(re::Digest {
                hash: "123".into(),
                size_bytes: 1,
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    expect_status(
        update(&server, "", b"a", bad_file).await,
        Code::InvalidArgument,
        &["\"123\""],
    );
    let result = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(re::Digest {
                hash: "XYZ".into(),
                size_bytes: 3,
            }),
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["\"XYZ\""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instance_is_invalid_argument() {
    let server = TestServer::start().await;
    let result = stored_result(&server).await;
    expect_status(
        update(&server, "elsewhere", b"a", result).await,
        Code::InvalidArgument,
        &["unknown instance name \"elsewhere\""],
    );
    expect_status(
        get(&server, "elsewhere", b"a").await,
        Code::InvalidArgument,
        &["unknown instance name \"elsewhere\""],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_can_be_switched_off() {
    let server = TestServer::start_with(|c| c.instances[0].allow_ac_updates = false).await;
    let result = stored_result(&server).await;
    expect_status(
        update(&server, "", b"a", result).await,
        Code::PermissionDenied,
        &["does not accept UpdateActionResult"],
    );
    // Reads still work.
    expect_status(
        get(&server, "", b"a").await,
        Code::NotFound,
        &["no action result"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_requests_are_honoured() {
    let server = TestServer::start().await;
    upload_blobs(&server, &[b"AAA", b"BBB", b"hello out", b"hello err"]).await;
    let result = re::ActionResult {
        output_files: vec![output_file("out/a", b"AAA"), output_file("out/b", b"BBB")],
        stdout_digest: Some(digest(b"hello out")),
        stderr_digest: Some(digest(b"hello err")),
        ..Default::default()
    };
    update(&server, "", b"action", result.clone())
        .await
        .unwrap();

    let got = get_with(
        &server,
        re::GetActionResultRequest {
            action_digest: Some(digest(b"action")),
            inline_stdout: true,
            inline_stderr: false,
            inline_output_files: vec!["out/b".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(got.stdout_raw, &b"hello out"[..]);
    assert!(got.stderr_raw.is_empty(), "stderr was not asked for");
    assert!(
        got.output_files[0].contents.is_empty(),
        "out/a was not asked for"
    );
    assert_eq!(got.output_files[1].contents, &b"BBB"[..]);
    // Inlining adds contents; the digests stay.
    assert_eq!(got.stdout_digest, result.stdout_digest);
    assert_eq!(got.output_files[1].digest, result.output_files[1].digest);

    let got = get_with(
        &server,
        re::GetActionResultRequest {
            action_digest: Some(digest(b"action")),
            inline_stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(got.stderr_raw, &b"hello err"[..]);
    assert!(got.stdout_raw.is_empty());

    // Without inline flags the result comes back as stored.
    assert_eq!(get(&server, "", b"action").await.unwrap(), result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_are_served_even_when_inlining_is_asked() {
    let server = TestServer::start().await;
    // Bigger than a client would want inlined into one GetActionResult reply.
    let big = common::pseudo_random(3 * 1024 * 1024 / 2, 1);
    write_blob(&server, &big).await;
    let result = re::ActionResult {
        stdout_digest: Some(digest(&big)),
        ..Default::default()
    };
    update(&server, "", b"action", result).await.unwrap();
    let got = get_with(
        &server,
        re::GetActionResultRequest {
            action_digest: Some(digest(b"action")),
            inline_stdout: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(got.stdout_digest, Some(digest(&big)));
    assert!(
        got.stdout_raw.is_empty() || got.stdout_raw == big,
        "stdout is either left out or inlined whole"
    );
}

async fn write_blob(server: &TestServer, data: &[u8]) {
    use rexd::proto::bytestream::WriteRequest;
    let request = WriteRequest {
        resource_name: common::upload_path(data),
        write_offset: 0,
        finish_write: true,
        data: bytes::Bytes::copy_from_slice(data),
    };
    server
        .bytestream()
        .await
        .write(futures::stream::iter(vec![request]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cache_survives_a_restart() {
    let server = TestServer::start().await;
    let result = stored_result(&server).await;
    update(&server, "", b"action", result.clone())
        .await
        .unwrap();
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(get(&server, "", b"action").await.unwrap(), result);
}

/// Results whose blobs disappear from the CAS (here: deleted while the server is down, as an
/// eviction would) must read as misses, never as results a client cannot download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_results_are_not_served() {
    let server = TestServer::start().await;

    let tree_file = b"file inside a Tree".to_vec();
    let tree = re::Tree {
        root: Some(re::Directory {
            files: vec![re::FileNode {
                name: "inner".into(),
                digest: Some(digest(&tree_file)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    let dir_file = b"file inside a root directory".to_vec();
    let root_dir = re::Directory {
        files: vec![re::FileNode {
            name: "inner".into(),
            digest: Some(digest(&dir_file)),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    upload_blobs(
        &server,
        &[
            b"output file",
            b"stdout",
            &tree_file,
            &tree,
            &dir_file,
            &root_dir,
            b"kept",
        ],
    )
    .await;

    let cases: Vec<(&[u8], re::ActionResult, &[u8])> = vec![
        (
            b"output file action",
            re::ActionResult {
                output_files: vec![output_file("o", b"output file")],
                ..Default::default()
            },
            b"output file",
        ),
        (
            b"stdout action",
            re::ActionResult {
                stdout_digest: Some(digest(b"stdout")),
                ..Default::default()
            },
            b"stdout",
        ),
        (
            b"tree action",
            re::ActionResult {
                output_directories: vec![re::OutputDirectory {
                    path: "d".into(),
                    tree_digest: Some(digest(&tree)),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &tree_file,
        ),
        (
            b"root directory action",
            re::ActionResult {
                output_directories: vec![re::OutputDirectory {
                    path: "d".into(),
                    root_directory_digest: Some(digest(&root_dir)),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &dir_file,
        ),
    ];
    let control = re::ActionResult {
        output_files: vec![output_file("k", b"kept")],
        output_directories: vec![re::OutputDirectory {
            path: "d".into(),
            tree_digest: Some(digest(&tree)),
            ..Default::default()
        }],
        ..Default::default()
    };
    for (action, result, _) in &cases {
        update(&server, "", action, result.clone()).await.unwrap();
        assert_eq!(&get(&server, "", action).await.unwrap(), result);
    }
    update(&server, "", b"control", control.clone())
        .await
        .unwrap();

    let dir = server.stop().await;
    for (_, _, blob) in &cases {
        let path = blob_file(dir.path(), blob);
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
    }
    let server = TestServer::start_in(dir, |_| {}).await;
    for (action, _, blob) in &cases {
        assert!(!is_stored(&server, blob).await);
        let status = expect_status(
            get(&server, "", action).await,
            Code::NotFound,
            &["no action result"],
        );
        assert!(
            status.message().contains(&digest(action).hash),
            "{}",
            status.message()
        );
    }

    // `control` shares the Tree that lost a file: a miss too, until the file is back.
    expect_status(
        get(&server, "", b"control").await,
        Code::NotFound,
        &["no action result"],
    );
    upload_blobs(&server, &[&tree_file]).await;
    assert_eq!(get(&server, "", b"control").await.unwrap(), control);
    assert_eq!(get(&server, "", b"tree action").await.unwrap(), cases[2].1);
}

/// A stored result whose output tree blob is not a Tree (or Directory) cannot be served, and
/// must read as a miss, so clients recompute and overwrite it, not as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_with_undecodable_trees_are_misses() {
    let server = TestServer::start().await;
    let garbage = b"\xff\xff\xff not a proto".to_vec();
    // Decodes as a Tree, but names a file by a malformed digest.
    let bad_file_tree = re::Tree {
        root: Some(re::Directory {
            files: vec![re::FileNode {
                name: "f".into(),
                digest: Some(re::Digest {
                    hash: "bad".into(),
                    size_bytes: 1,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    }
    .encode_to_vec();
    upload_blobs(&server, &[&garbage, &bad_file_tree]).await;
    for (action, dir) in [
        (
            &b"bad file action"[..],
            re::OutputDirectory {
                path: "d".into(),
                tree_digest: Some(digest(&bad_file_tree)),
                ..Default::default()
            },
        ),
        (
            &b"tree action"[..],
            re::OutputDirectory {
                path: "d".into(),
                tree_digest: Some(digest(&garbage)),
                ..Default::default()
            },
        ),
        (
            &b"root directory action"[..],
            re::OutputDirectory {
                path: "d".into(),
                root_directory_digest: Some(digest(&garbage)),
                ..Default::default()
            },
        ),
    ] {
        let result = re::ActionResult {
            output_directories: vec![dir],
            ..Default::default()
        };
        // Such a result is refused on the way in...
        expect_status(
            update(&server, "", action, result.clone()).await,
            Code::FailedPrecondition,
            &["missing"],
        );
        // ...and one that got on disk some other way is a miss on the way out.
        let action_digest = rexd::digest::Digest::of(rexd::digest::DigestFunction::Sha256, action);
        server.ctx.ac.put("", &action_digest, &result).unwrap();
        expect_status(
            get(&server, "", action).await,
            Code::NotFound,
            &["no action result"],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_results_are_kept_apart() {
    use rexd::digest::{Digest, DigestFunction};
    let b3 = |data: &[u8]| Digest::of(DigestFunction::Blake3, data).to_proto();
    let blake3 = re::digest_function::Value::Blake3 as i32;
    let server = TestServer::start().await;
    let mut ac = server.action_cache().await;

    // Referenced blobs are looked up under BLAKE3: the missing one is named in BLAKE3's form.
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "o".into(),
            digest: Some(b3(b"blake3 output")),
            ..Default::default()
        }],
        ..Default::default()
    };
    let request = re::UpdateActionResultRequest {
        action_digest: Some(b3(b"action")),
        action_result: Some(result.clone()),
        digest_function: blake3,
        ..Default::default()
    };
    let missing = b3(b"blake3 output");
    let status = expect_status(
        ac.update_action_result(request.clone()).await,
        Code::FailedPrecondition,
        &[&missing.hash],
    );
    let details = rpc::Status::decode(status.details()).unwrap();
    let failure = rpc::PreconditionFailure::decode(&details.details[0].value[..]).unwrap();
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/blake3/{}/{}", missing.hash, missing.size_bytes)
    );

    server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(b3(b"blake3 output")),
                data: bytes::Bytes::from_static(b"blake3 output"),
                compressor: 0,
            }],
            digest_function: blake3,
            ..Default::default()
        })
        .await
        .unwrap();
    ac.update_action_result(request).await.unwrap();
    let got = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(b3(b"action")),
            digest_function: blake3,
            inline_output_files: vec!["o".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files[0].contents, &b"blake3 output"[..]);
    // The same action hex under SHA-256 is another action.
    let result = ac
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(b3(b"action")),
            ..Default::default()
        })
        .await;
    expect_status(result, Code::NotFound, &["no action result"]);
}
