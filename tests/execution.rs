//! The Execution service against a real in-process rexd: running actions and collecting their
//! outputs, the action cache, validation of what Execute is given, timeouts, cancellation,
//! merging and the scheduler's priority and queue limit.

mod common;

use std::time::Duration;

use common::exec::*;
use common::{TestServer, digest, dir_node, expect_status, file_node};
use prost::Message;
use rexd::proto::longrunning::CancelOperationRequest;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use rexd::proto::rpc;
use tonic::Code;

async fn get_action_result(
    server: &TestServer,
    action: &re::Digest,
) -> Result<re::ActionResult, tonic::Status> {
    server
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

// ---- Running actions and collecting outputs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_captured() {
    let server = start_plain(|_| {}).await;
    let result = run_ok(&server, &sh("echo hello; echo oops >&2")).await;
    assert_eq!(read_text(&server, &result.stdout_digest).await, "hello\n");
    assert_eq!(read_text(&server, &result.stderr_digest).await, "oops\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_file_parents_are_created_by_the_server() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("echo data > out/deep/f.txt");
    action.output_files = vec!["out/deep/f.txt".into()];
    let result = run_ok(&server, &action).await;
    assert_eq!(result.output_files.len(), 1, "{result:?}");
    let file = &result.output_files[0];
    assert_eq!(file.path, "out/deep/f.txt");
    assert!(!file.is_executable);
    assert_eq!(read_text(&server, &file.digest).await, "data\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_directory_is_returned_as_a_tree() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("mkdir -p d/sub && echo a > d/a && echo b > d/sub/b && chmod +x d/sub/b");
    action.output_directories = vec!["d".into()];
    let result = run_ok(&server, &action).await;
    assert_eq!(result.output_directories.len(), 1, "{result:?}");
    let out = &result.output_directories[0];
    assert_eq!(out.path, "d");
    let tree =
        re::Tree::decode(&read_blob(&server, out.tree_digest.as_ref().unwrap()).await[..]).unwrap();
    let root = tree.root.unwrap();
    assert_eq!(root.files.len(), 1);
    assert_eq!(root.files[0].name, "a");
    assert!(!root.files[0].is_executable);
    assert_eq!(root.files[0].digest, Some(digest(b"a\n")));
    assert_eq!(
        read_blob(&server, root.files[0].digest.as_ref().unwrap()).await,
        b"a\n"
    );
    assert_eq!(root.directories.len(), 1);
    assert_eq!(root.directories[0].name, "sub");
    assert_eq!(tree.children.len(), 1, "the child directory is included");
    let child = &tree.children[0];
    assert_eq!(
        root.directories[0].digest,
        Some(digest(&child.encode_to_vec()))
    );
    assert_eq!(child.files.len(), 1);
    assert_eq!(child.files[0].name, "b");
    assert!(child.files[0].is_executable);
    assert_eq!(
        read_blob(&server, child.files[0].digest.as_ref().unwrap()).await,
        b"b\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_symlink_is_reported_as_a_symlink() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("echo x > target && ln -s target link");
    action.output_paths = vec!["link".into()];
    let result = run_ok(&server, &action).await;
    assert!(result.output_files.is_empty(), "{result:?}");
    assert_eq!(result.output_symlinks.len(), 1, "{result:?}");
    assert_eq!(result.output_symlinks[0].path, "link");
    assert_eq!(result.output_symlinks[0].target, "target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_paths_are_echoed_back_exactly() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("echo up > ../up/file.txt && echo here > here.txt && \
         mkdir dir && echo in > dir/x");
    action.working_directory = "work".into();
    action.output_paths = vec!["../up/file.txt".into(), "./here.txt".into(), "dir".into()];
    let result = run_ok(&server, &action).await;
    let mut files: Vec<(&str, &Option<re::Digest>)> = result
        .output_files
        .iter()
        .map(|f| (f.path.as_str(), &f.digest))
        .collect();
    files.sort_by_key(|f| f.0);
    assert_eq!(
        files,
        [
            ("../up/file.txt", &Some(digest(b"up\n"))),
            ("./here.txt", &Some(digest(b"here\n"))),
        ]
    );
    assert_eq!(result.output_directories.len(), 1, "{result:?}");
    assert_eq!(result.output_directories[0].path, "dir");
    let tree = re::Tree::decode(
        &read_blob(
            &server,
            result.output_directories[0].tree_digest.as_ref().unwrap(),
        )
        .await[..],
    )
    .unwrap();
    assert_eq!(tree.root.unwrap().files[0].name, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_working_directory_are_respected() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("echo \"foo=$FOO\"; echo \"home=${HOME-unset}\"; pwd; cat in.txt")
        .file("a/b/in.txt", b"input\n");
    action.env.push(("FOO".into(), "bar baz".into()));
    action.working_directory = "a/b".into();
    let result = run_ok(&server, &action).await;
    let stdout = read_text(&server, &result.stdout_digest).await;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], "foo=bar baz");
    assert_eq!(lines[1], "home=unset", "no host variable leaks in");
    assert!(lines[2].ends_with("/a/b"), "{stdout}");
    assert_eq!(lines[3], "input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_executable_bit_is_honoured() {
    let server = start_plain(|_| {}).await;
    let script = b"#!/bin/sh\necho ran\n";
    let action = sh("./tool.sh && if [ -x plain.sh ]; then echo wrong; else echo plain; fi")
        .executable("tool.sh", script)
        .file("plain.sh", script);
    let result = run_ok(&server, &action).await;
    assert_eq!(
        read_text(&server, &result.stdout_digest).await,
        "ran\nplain\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ends_with_a_completed_update_naming_the_action() {
    let server = start_plain(|_| {}).await;
    let prepared = sh("echo staged").build();
    prepared.upload(&server).await;
    let updates = collect(start(&server, prepared.request()).await.unwrap()).await;
    let (last, earlier) = updates.split_last().unwrap();
    assert!(last.done);
    assert_eq!(stage(last), Stage::Completed);
    assert!(last.name.starts_with("operations/"), "{}", last.name);
    for op in earlier {
        assert!(!op.done);
        assert!(
            matches!(stage(op), Stage::Queued | Stage::Executing),
            "{op:?}"
        );
    }
    for op in &updates {
        assert_eq!(metadata(op).action_digest, Some(prepared.digest.clone()));
    }
    assert_eq!(status_code(&response(last)), Code::Ok);
}

// ---- The action cache ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_exit_is_reported_and_not_cached() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let counter = shared_file(&outside, "counter");
    let prepared = sh(format!("echo run >> '{}'; exit 3", counter.display())).build();
    prepared.upload(&server).await;
    let first = execute(&server, prepared.request()).await;
    assert_eq!(
        status_code(&first),
        Code::Ok,
        "a failing command is not an RPC error"
    );
    assert_eq!(first.result.unwrap().exit_code, 3);
    expect_status(
        get_action_result(&server, &prepared.digest).await,
        Code::NotFound,
        &[],
    );
    let second = execute(&server, prepared.request()).await;
    assert!(!second.cached_result);
    assert_eq!(second.result.unwrap().exit_code, 3);
    assert_eq!(lines(&counter).len(), 2, "the failed action ran again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_execute_is_a_cache_hit() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let counter = shared_file(&outside, "counter");
    let prepared = sh(format!("echo run >> '{}'; echo out", counter.display())).build();
    prepared.upload(&server).await;
    let first = execute(&server, prepared.request()).await;
    assert!(!first.cached_result);
    let cached = get_action_result(&server, &prepared.digest).await.unwrap();
    let second = execute(&server, prepared.request()).await;
    assert!(second.cached_result);
    assert_eq!(status_code(&second), Code::Ok);
    let result = second.result.unwrap();
    assert_eq!(result, cached);
    assert_eq!(result.stdout_digest, first.result.unwrap().stdout_digest);
    assert_eq!(lines(&counter).len(), 1, "the action ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_cache_lookup_runs_again() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let counter = shared_file(&outside, "counter");
    let prepared = sh(format!("echo run >> '{}'", counter.display())).build();
    prepared.upload(&server).await;
    assert!(!execute(&server, prepared.request()).await.cached_result);
    let mut request = prepared.request();
    request.skip_cache_lookup = true;
    let second = execute(&server, request).await;
    assert!(!second.cached_result);
    assert_eq!(second.result.unwrap().exit_code, 0);
    assert_eq!(lines(&counter).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_not_cache_is_not_written_to_the_action_cache() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let counter = shared_file(&outside, "counter");
    let mut action = sh(format!("echo run >> '{}'", counter.display()));
    action.do_not_cache = true;
    let prepared = action.build();
    prepared.upload(&server).await;
    assert!(!execute(&server, prepared.request()).await.cached_result);
    expect_status(
        get_action_result(&server, &prepared.digest).await,
        Code::NotFound,
        &[],
    );
    assert!(!execute(&server, prepared.request()).await.cached_result);
    assert_eq!(lines(&counter).len(), 2);
}

// ---- What Execute rejects ----

/// The MISSING subjects of a FAILED_PRECONDITION, sorted.
fn missing_subjects(status: &tonic::Status) -> Vec<String> {
    let rpc_status =
        rpc::Status::decode(status.details()).expect("details are a google.rpc.Status");
    assert_eq!(rpc_status.code, Code::FailedPrecondition as i32);
    let failures: Vec<rpc::PreconditionFailure> = rpc_status
        .details
        .iter()
        .filter(|a| a.type_url == "type.googleapis.com/google.rpc.PreconditionFailure")
        .map(|a| rpc::PreconditionFailure::decode(&a.value[..]).unwrap())
        .collect();
    assert_eq!(failures.len(), 1, "one PreconditionFailure: {rpc_status:?}");
    let mut subjects: Vec<String> = failures[0]
        .violations
        .iter()
        .map(|v| {
            assert_eq!(v.r#type, "MISSING");
            v.subject.clone()
        })
        .collect();
    subjects.sort();
    subjects
}

fn subject(d: &re::Digest) -> String {
    format!("blobs/{}/{}", d.hash, d.size_bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_missing_blob_is_listed() {
    let server = start_plain(|_| {}).await;
    let action = sh("cat f sub/g")
        .file("f", b"missing file")
        .file("sub/g", b"in a missing directory");
    let prepared = action.build();
    // directories: [sub, root]
    let sub_dir = prepared.directories[0].clone();
    prepared
        .upload_except(
            &server,
            &[&prepared.command_blob, b"missing file", &sub_dir],
        )
        .await;
    let status = expect_status(
        start(&server, prepared.request()).await,
        Code::FailedPrecondition,
        &[],
    );
    let mut wanted = vec![
        subject(&digest(&prepared.command_blob)),
        subject(&digest(b"missing file")),
        subject(&digest(&sub_dir)),
    ];
    wanted.sort();
    assert_eq!(missing_subjects(&status), wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_action_is_listed() {
    let server = start_plain(|_| {}).await;
    let prepared = sh("true").build();
    prepared
        .upload_except(&server, &[&prepared.action_blob])
        .await;
    let status = expect_status(
        start(&server, prepared.request()).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_eq!(missing_subjects(&status), [subject(&prepared.digest)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_directory_named_twice_is_listed_once() {
    let server = start_plain(|_| {}).await;
    let action = sh("true").file("x/f", b"shared").file("y/f", b"shared");
    let prepared = action.build();
    // directories: [x, y, root]; x and y are the same blob.
    let shared = prepared.directories[0].clone();
    assert_eq!(shared, prepared.directories[1]);
    prepared.upload_except(&server, &[&shared]).await;
    let status = expect_status(
        start(&server, prepared.request()).await,
        Code::FailedPrecondition,
        &[],
    );
    assert_eq!(missing_subjects(&status), [subject(&digest(&shared))]);
}

fn symlink_node(name: &str, target: &str) -> re::SymlinkNode {
    re::SymlinkNode {
        name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

/// Uploads an action over a hand-built input root and expects INVALID_ARGUMENT.
async fn expect_invalid_tree(root: re::Directory, subdirs: Vec<re::Directory>, needle: &str) {
    let server = start_plain(|_| {}).await;
    let mut action = sh("true");
    action.raw_root = Some(root);
    action.extra_directories = subdirs;
    let prepared = action.build();
    prepared.upload(&server).await;
    upload_file_contents(&server).await;
    expect_status(
        start(&server, prepared.request()).await,
        Code::InvalidArgument,
        &[needle],
    );
}

/// The contents the hand-built trees name.
async fn upload_file_contents(server: &TestServer) {
    common::upload_blobs(server, &[b"a", b"b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsorted_tree_is_invalid() {
    let root = re::Directory {
        files: vec![file_node("b", b"b"), file_node("a", b"a")],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![], "\"b\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_are_invalid() {
    let root = re::Directory {
        files: vec![file_node("a", b"a"), file_node("a", b"b")],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![], "\"a\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_directory_with_one_name_are_invalid() {
    let empty = re::Directory::default();
    let root = re::Directory {
        files: vec![file_node("x", b"a")],
        directories: vec![dir_node("x", &empty)],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![empty], "\"x\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_with_a_slash_is_invalid() {
    let root = re::Directory {
        files: vec![file_node("a/b", b"a")],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![], "a/b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_name_is_invalid() {
    let empty = re::Directory::default();
    let root = re::Directory {
        directories: vec![dir_node("..", &empty)],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![empty], "\"..\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_escaping_the_root_is_invalid() {
    let sub = re::Directory {
        symlinks: vec![symlink_node("l", "../../etc/passwd")],
        ..Default::default()
    };
    let root = re::Directory {
        directories: vec![dir_node("sub", &sub)],
        ..Default::default()
    };
    expect_invalid_tree(root, vec![sub], "../../etc/passwd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_inside_the_root_is_staged() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("cat sub/l").file("f", b"through the link\n");
    action.symlinks = vec![("sub/l".into(), "../f".into())];
    let result = run_ok(&server, &action).await;
    assert_eq!(
        read_text(&server, &result.stdout_digest).await,
        "through the link\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_platform_property_is_a_failed_precondition() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("true");
    action.platform = vec![("GpuModel".into(), "tesla".into())];
    let prepared = action.build();
    prepared.upload(&server).await;
    expect_status(
        start(&server, prepared.request()).await,
        Code::FailedPrecondition,
        &["GpuModel"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_platform_property_runs() {
    let server = start_plain(|_| {}).await;
    let mut action = sh("echo ok");
    action.platform = vec![("OSFamily".into(), "linux".into())];
    let result = run_ok(&server, &action).await;
    assert_eq!(read_text(&server, &result.stdout_digest).await, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_above_the_maximum_is_invalid() {
    let server = start_plain(|cfg| {
        cfg.execution.default_timeout_secs = 5;
        cfg.execution.max_timeout_secs = 10;
    })
    .await;
    let mut action = sh("true");
    action.timeout = Some(Duration::from_secs(11));
    let prepared = action.build();
    prepared.upload(&server).await;
    expect_status(
        start(&server, prepared.request()).await,
        Code::InvalidArgument,
        &["10s"],
    );
}

// ---- Timeouts and cancellation ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let pidfile = outside.path().join("pid");
    let mut action = sh(format!(
        "sleep 1000 & echo $! > '{}'; sleep 1000",
        pidfile.display()
    ));
    action.timeout = Some(Duration::from_secs(1));
    let prepared = action.build();
    prepared.upload(&server).await;
    let response = execute(&server, prepared.request()).await;
    assert_eq!(
        status_code(&response),
        Code::DeadlineExceeded,
        "{response:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("the action wrote the grandchild's pid")
        .trim()
        .parse()
        .unwrap();
    eventually("the background sleep to die", || !process_alive(pid)).await;
    expect_status(
        get_action_result(&server, &prepared.digest).await,
        Code::NotFound,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_operation_kills_it() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let pidfile = outside.path().join("pid");
    let prepared = sh(format!(
        "echo $$ > '{}'; exec sleep 1000",
        pidfile.display()
    ))
    .build();
    prepared.upload(&server).await;
    let mut stream = start(&server, prepared.request()).await.unwrap();
    let executing = wait_for_stage(&mut stream, Stage::Executing).await;
    eventually("the action to start", || lines(&pidfile).len() == 1).await;
    let pid: i32 = lines(&pidfile)[0].parse().unwrap();
    operations_client(&server)
        .await
        .cancel_operation(CancelOperationRequest {
            name: executing.name.clone(),
        })
        .await
        .unwrap();
    let updates = collect(stream).await;
    let response = response(updates.last().unwrap());
    assert_eq!(status_code(&response), Code::Cancelled, "{response:?}");
    eventually("the cancelled action to die", || !process_alive(pid)).await;
    expect_status(
        get_action_result(&server, &prepared.digest).await,
        Code::NotFound,
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_operation_dequeues_it() {
    let server = start_plain(|cfg| cfg.execution.local_workers = Some(1)).await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let ran = outside.path().join("ran");
    let blocker = sh(wait_for_file(&go)).build();
    blocker.upload(&server).await;
    let mut blocker_stream = start(&server, blocker.request()).await.unwrap();
    wait_for_stage(&mut blocker_stream, Stage::Executing).await;

    let queued = sh(format!("echo queued >> '{}'", ran.display())).build();
    queued.upload(&server).await;
    let mut stream = start(&server, queued.request()).await.unwrap();
    let first = next_update(&mut stream).await;
    assert_eq!(stage(&first), Stage::Queued);
    operations_client(&server)
        .await
        .cancel_operation(CancelOperationRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap();
    let updates = collect(stream).await;
    assert_eq!(
        status_code(&response(updates.last().unwrap())),
        Code::Cancelled
    );

    std::fs::write(&go, "").unwrap();
    collect(blocker_stream).await;
    // The single worker takes jobs in order: had the cancelled one stayed queued, it would
    // have run before this one.
    run_ok(&server, &sh("true")).await;
    assert!(lines(&ran).is_empty(), "the cancelled action ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_after_a_cancel_does_not_join_the_cancelled_operation() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let pidfile = outside.path().join("pid");
    // A large stdout keeps the worker busy for a moment after the kill, while the new
    // Execute arrives.
    let prepared = sh(format!(
        "head -c 8000000 /dev/zero; echo $$ >> '{}'; exec sleep 1000",
        pidfile.display()
    ))
    .build();
    prepared.upload(&server).await;
    let mut first = start(&server, prepared.request()).await.unwrap();
    let executing = wait_for_stage(&mut first, Stage::Executing).await;
    eventually("the action to start", || lines(&pidfile).len() == 1).await;
    let mut ops = operations_client(&server).await;
    ops.cancel_operation(CancelOperationRequest {
        name: executing.name.clone(),
    })
    .await
    .unwrap();
    let mut second = start(&server, prepared.request()).await.unwrap();
    let update = next_update(&mut second).await;
    assert_ne!(
        update.name, executing.name,
        "joined an operation already cancelled"
    );
    let ended = collect(first).await;
    assert_eq!(
        status_code(&response(ended.last().unwrap())),
        Code::Cancelled
    );
    ops.cancel_operation(CancelOperationRequest {
        name: update.name.clone(),
    })
    .await
    .unwrap();
    collect(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_after_dropping_the_stream_gets_the_result() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let prepared = sh(format!("{}; echo finished", wait_for_file(&go))).build();
    prepared.upload(&server).await;
    let mut stream = start(&server, prepared.request()).await.unwrap();
    let first = next_update(&mut stream).await;
    assert!(!first.done);
    drop(stream);

    let mut waiting = execution_client(&server)
        .await
        .wait_execution(re::WaitExecutionRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let update = next_update(&mut waiting).await;
    assert_eq!(update.name, first.name);
    assert!(!update.done, "the action waits for the go file");
    std::fs::write(&go, "").unwrap();
    let updates = collect(waiting).await;
    let response = response(updates.last().unwrap());
    assert_eq!(status_code(&response), Code::Ok);
    let result = response.result.unwrap();
    assert_eq!(
        read_text(&server, &result.stdout_digest).await,
        "finished\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_execution_of_an_unknown_operation_is_not_found() {
    let server = start_plain(|_| {}).await;
    let result = execution_client(&server)
        .await
        .wait_execution(re::WaitExecutionRequest {
            name: "operations/00000000-0000-0000-0000-000000000000".into(),
        })
        .await;
    expect_status(result.map(|_| ()), Code::NotFound, &["operations/0000"]);
}

// ---- Scheduling ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_executes_are_merged() {
    let server = start_plain(|_| {}).await;
    let outside = outside_dir();
    let counter = shared_file(&outside, "counter");
    let go = outside.path().join("go");
    let prepared = sh(format!(
        "echo run >> '{}'; {}; echo merged",
        counter.display(),
        wait_for_file(&go)
    ))
    .build();
    prepared.upload(&server).await;
    let mut a = start(&server, prepared.request()).await.unwrap();
    let first_a = next_update(&mut a).await;
    let mut b = start(&server, prepared.request()).await.unwrap();
    let first_b = next_update(&mut b).await;
    assert_eq!(
        first_a.name, first_b.name,
        "the second Execute joined the first"
    );
    std::fs::write(&go, "").unwrap();
    let (ua, ub) = tokio::join!(collect(a), collect(b));
    let (ra, rb) = (response(ua.last().unwrap()), response(ub.last().unwrap()));
    assert_eq!(ra, rb);
    assert_eq!(status_code(&ra), Code::Ok);
    assert_eq!(
        read_text(&server, &ra.result.unwrap().stdout_digest).await,
        "merged\n"
    );
    assert_eq!(lines(&counter), ["run"], "the action ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_runs_first() {
    let server = start_plain(|cfg| cfg.execution.local_workers = Some(1)).await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let order = shared_file(&outside, "order");
    let blocker = sh(wait_for_file(&go)).build();
    blocker.upload(&server).await;
    let mut blocker_stream = start(&server, blocker.request()).await.unwrap();
    wait_for_stage(&mut blocker_stream, Stage::Executing).await;

    let mut streams = Vec::new();
    for (name, priority) in [("low", 10), ("high", -5)] {
        let prepared = sh(format!("echo {name} >> '{}'", order.display())).build();
        prepared.upload(&server).await;
        let mut request = prepared.request();
        request.execution_policy = Some(re::ExecutionPolicy { priority });
        let mut stream = start(&server, request).await.unwrap();
        assert_eq!(stage(&next_update(&mut stream).await), Stage::Queued);
        streams.push(stream);
    }
    std::fs::write(&go, "").unwrap();
    collect(blocker_stream).await;
    for stream in streams {
        collect(stream).await;
    }
    assert_eq!(lines(&order), ["high", "low"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted() {
    let server = start_plain(|cfg| {
        cfg.execution.local_workers = Some(1);
        cfg.execution.max_queued = 1;
    })
    .await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let blocker = sh(wait_for_file(&go)).build();
    blocker.upload(&server).await;
    let mut blocker_stream = start(&server, blocker.request()).await.unwrap();
    wait_for_stage(&mut blocker_stream, Stage::Executing).await;

    let queued = sh("echo queued").build();
    queued.upload(&server).await;
    let mut queued_stream = start(&server, queued.request()).await.unwrap();
    assert_eq!(stage(&next_update(&mut queued_stream).await), Stage::Queued);

    let extra = sh("echo extra").build();
    extra.upload(&server).await;
    expect_status(
        start(&server, extra.request()).await,
        Code::ResourceExhausted,
        &["queue"],
    );

    std::fs::write(&go, "").unwrap();
    collect(blocker_stream).await;
    collect(queued_stream).await;
    run_ok(&server, &sh("echo extra")).await;
}
