//! Containment: actions try to escape the namespace sandbox (bubblewrap) and must fail, in
//! host mode (network, writes outside the exec root, leftover processes, the host's /proc,
//! process growth) and in chroot mode (host files). Each escape is first shown to work in
//! plain mode where that is meaningful, so the test can tell a sandbox from a broken action.

mod common;

use std::time::Duration;

use common::exec::{
    self, ActionBuilder, operations_client, outside_dir, run, sh, start, start_plain, status_code,
    wait_for_stage,
};
use common::sandboxed::{output, processes_with, start_sandboxed};
use rexd::config::{InstanceConfig, SandboxMode};
use rexd::proto::longrunning::CancelOperationRequest;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use tonic::Code;

fn bash(script: String) -> ActionBuilder {
    let mut action = sh(script);
    action.arguments[0] = "/bin/bash".into();
    action
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_has_no_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let connect = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected");

    // Control: a plain process reaches the listener.
    let plain = start_plain(|_| {}).await;
    let (code, text) = output(&plain, &bash(connect.clone())).await;
    assert_eq!((code, text.trim()), (0, "connected"));
    assert!(listener.accept().is_ok(), "the plain action connected");

    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let (code, text) = output(&server, &bash(connect)).await;
    assert_ne!(code, 0, "the sandboxed action reached the network: {text}");
    assert!(
        listener.accept().is_err(),
        "nothing may reach the test's listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_mode_cannot_write_outside_the_exec_root() {
    let outside = outside_dir();
    let target = outside.path().join("escaped");
    let script = format!("echo escaped > '{}'", target.display());

    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let response = run(&server, &sh(script.clone()).file("input.txt", b"x")).await;
    assert_ne!(response.result.unwrap().exit_code, 0);
    assert!(!target.exists(), "the action wrote outside its exec root");

    // Its own exec root is writable, and the host's root filesystem is not.
    let (code, _) = output(
        &server,
        &sh("echo ok > mine.txt && ! touch /etc/rexd-escape"),
    )
    .await;
    assert_eq!(code, 0);
    assert!(!std::path::Path::new("/etc/rexd-escape").exists());

    // Control: a plain action can write there.
    let plain = start_plain(|_| {}).await;
    let (code, _) = output(&plain, &sh(script)).await;
    assert_eq!(code, 0);
    assert!(target.exists());
}

/// Processes on the host whose command line contains `marker`.
fn orphan_maker(marker: &str) -> ActionBuilder {
    // The child detaches into its own session, as a daemon would.
    sh(format!("setsid sh {marker}.sh & sleep 1000")).file(&format!("{marker}.sh"), b"sleep 1000\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_survives_a_timeout() {
    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let marker = format!("orphan-timeout-{}", std::process::id());
    let mut action = orphan_maker(&marker);
    action.timeout = Some(Duration::from_secs(1));
    let response = run(&server, &action).await;
    assert_eq!(status_code(&response), Code::DeadlineExceeded);
    exec::eventually("the detached child to die", || {
        processes_with(&marker).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_survives_a_cancel() {
    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let marker = format!("orphan-cancel-{}", std::process::id());
    let prepared = orphan_maker(&marker).build();
    prepared.upload(&server).await;
    let mut stream = start(&server, prepared.request()).await.unwrap();
    let op = wait_for_stage(&mut stream, Stage::Executing).await;
    exec::eventually("the detached child to start", || {
        !processes_with(&marker).is_empty()
    })
    .await;
    operations_client(&server)
        .await
        .cancel_operation(CancelOperationRequest { name: op.name })
        .await
        .unwrap();
    let updates = exec::collect(stream).await;
    let response = exec::response(updates.last().unwrap());
    assert_eq!(status_code(&response), Code::Cancelled);
    exec::eventually("the detached child to die", || {
        processes_with(&marker).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_processes_are_invisible() {
    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let (code, text) = output(&server, &sh("ls /proc | grep -c '^[0-9]'")).await;
    assert_eq!(code, 0);
    let visible: usize = text.trim().parse().unwrap();
    assert!(
        visible < 10,
        "the action sees {visible} processes: the host's are visible"
    );
    let host: usize = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    assert!(host > visible, "the host has {host} processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_growth_is_capped() {
    const CAP: u64 = 24;
    let Some(server) = start_sandboxed(|c| c.sandbox.max_processes = CAP).await else {
        return;
    };
    // Try to run 100 processes at once, noting each started one with shell builtins only
    // (the shell gives up at the first fork it is refused).
    let mut action =
        sh("i=0; while [ $i -lt 100 ]; do sleep 30 & echo $! >> pids; i=$((i+1)); done");
    action.output_files = vec!["pids".into()];
    action.timeout = Some(Duration::from_secs(20));
    let response = run(&server, &action).await;
    let result = response.result.expect("a result");
    let pids = result
        .output_files
        .iter()
        .find(|f| f.path == "pids")
        .expect("the pid list");
    let text =
        String::from_utf8(exec::read_blob(&server, pids.digest.as_ref().unwrap()).await).unwrap();
    let started = text.lines().collect::<std::collections::HashSet<_>>().len() as u64;
    assert!(
        started > 0 && started < CAP,
        "{started} processes ran under a cap of {CAP} (exit {})",
        result.exit_code
    );
    assert_ne!(
        result.exit_code, 0,
        "the shell should have been refused a fork"
    );
    // The server is unharmed.
    let (code, text) = output(&server, &sh("echo still here")).await;
    assert_eq!((code, text.trim()), (0, "still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_uid_and_gid_are_honoured() {
    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let mut action = sh("echo $(id -u):$(id -g)");
    action.platform = vec![
        ("unixUID".into(), "1234".into()),
        ("unixGID".into(), "5678".into()),
    ];
    let (code, text) = output(&server, &action).await;
    assert_eq!((code, text.trim()), (0, "1234:5678"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_on_needs_the_configuration() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut action = bash(format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"
    ));
    action.platform = vec![("network".into(), "on".into())];

    let Some(server) = start_sandboxed(|_| {}).await else {
        return;
    };
    let prepared = action.build();
    prepared.upload(&server).await;
    let err = start(&server, prepared.request()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("network"), "{}", err.message());

    let Some(server) = start_sandboxed(|c| c.sandbox.allow_network = true).await else {
        return;
    };
    let (code, text) = output(&server, &action).await;
    assert_eq!((code, text.trim()), (0, "connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_mode_sees_only_the_input_root() {
    let Ok(busybox) = std::fs::read("/usr/bin/busybox") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "busybox-static is missing in CI"
        );
        eprintln!("SKIPPED: /usr/bin/busybox missing (apt-get install -y busybox-static)");
        return;
    };
    let Some(server) = start_sandboxed(|c| {
        c.instances.push(InstanceConfig {
            sandbox: SandboxMode::Chroot,
            ..InstanceConfig::named("bst")
        });
    })
    .await
    else {
        return;
    };
    let host_file = "/etc/hostname";
    assert!(
        std::path::Path::new(host_file).exists()
            || std::path::Path::new("/etc/os-release").exists()
    );
    let action = ActionBuilder {
        // `sh` is found through PATH inside the input root, as BuildStream sends it.
        arguments: vec![
            "sh".into(),
            "-c".into(),
            "ls /; cat /etc/os-release /etc/hostname".into(),
        ],
        env: vec![("PATH".into(), "/bin".into())],
        ..Default::default()
    }
    .executable("bin/busybox", &busybox)
    .file("marker.txt", b"from the input root");
    // `sh` must be a real file in the tree: busybox again, by content.
    let prepared = action.clone().executable("bin/sh", &busybox).build();
    prepared.upload(&server).await;
    let mut request = prepared.request();
    request.instance_name = "bst".into();
    let response = exec::execute(&server, request).await;
    let result = response.result.expect("a result");
    let stdout = result.stdout_digest.clone().expect("stdout digest");
    let text = String::from_utf8(exec::read_blob(&server, &stdout).await).unwrap();
    assert!(
        text.contains("marker.txt"),
        "ls / shows the input root: {text}"
    );
    assert!(!text.contains("usr"), "the host's /usr is visible: {text}");
    assert_ne!(result.exit_code, 0, "host files were readable: {text}");
}
