//! `ExecuteResponse.server_logs`: a failed or timed-out action carries the server's log of
//! it (worker, sandbox, limit hit, reason) as a CAS blob; a successful one carries none.

mod common;

use std::time::Duration;

use common::exec::*;
use tonic::Code;

async fn server_log(
    server: &common::TestServer,
    response: &rexd::proto::remote_execution::ExecuteResponse,
) -> String {
    let log = response
        .server_logs
        .get("rexd")
        .unwrap_or_else(|| panic!("a server log named \"rexd\": {response:?}"));
    assert!(log.human_readable);
    read_text(server, &log.digest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_timed_out_actions_carry_a_server_log() {
    let server = start_plain(|_| {}).await;

    let ok = run(&server, &sh("true")).await;
    assert_eq!(status_code(&ok), Code::Ok);
    assert!(ok.server_logs.is_empty(), "{ok:?}");

    let failed = run(&server, &sh("exit 3")).await;
    assert_eq!(failed.result.as_ref().unwrap().exit_code, 3);
    let log = server_log(&server, &failed).await;
    let worker = &failed
        .result
        .as_ref()
        .unwrap()
        .execution_metadata
        .as_ref()
        .unwrap()
        .worker;
    for needle in [
        format!("worker: {worker}\n"),
        "sandbox: plain (".into(),
        "max_output_size".into(),
        "exit code: 3\n".into(),
        "limit hit: none\n".into(),
        "reason: the command exited with code 3\n".into(),
    ] {
        assert!(log.contains(&needle), "{needle:?} not in:\n{log}");
    }

    let mut slow = sh("exec sleep 1000");
    slow.timeout = Some(Duration::from_secs(1));
    let timed_out = run(&server, &slow).await;
    assert_eq!(status_code(&timed_out), Code::DeadlineExceeded);
    let log = server_log(&server, &timed_out).await;
    assert!(log.contains("limit hit: the action's timeout\n"), "{log}");
    assert!(log.contains("reason: action timed out after 1s"), "{log}");

    // Killed by a signal: the log names it.
    let killed = run(&server, &sh("kill -KILL $$")).await;
    let log = server_log(&server, &killed).await;
    assert!(log.contains("(killed by SIGKILL)"), "{log}");
}
