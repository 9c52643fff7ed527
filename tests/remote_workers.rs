//! Remote workers over the Remote Workers API: `rexd worker` processes running a server's
//! actions, and a hand-driven bot probing what the server does with what bots say.

mod common;

use common::bots::{HandBot, WorkerProcess};
use common::exec::{self, ActionBuilder, sh};
use common::{TestServer, expect_status};
use rexd::proto::remote_execution as re;
use rexd::proto::remoteworkers as rw;
use tonic::Code;

/// A server that runs nothing itself; bots' sessions expire after `timeout_secs`.
async fn scheduler_only(timeout_secs: u64, retries: u32) -> TestServer {
    TestServer::start_with(|c| {
        c.execution.local_workers = Some(0);
        c.execution.bot_session_timeout_secs = timeout_secs;
        c.execution.max_lease_retries = retries;
    })
    .await
}

fn writes_output() -> ActionBuilder {
    ActionBuilder {
        output_files: vec!["out/greeting".into()],
        ..sh("mkdir -p out && cat in/name > out/greeting && echo ran")
    }
    .file("in/name", b"hello from a bot")
}

#[tokio::test]
async fn actions_run_on_a_remote_worker_which_the_metadata_names() {
    let server = scheduler_only(30, 3).await;
    let _worker = WorkerProcess::start(&server.url(), "bot-a", 2);
    let result = exec::run_ok(&server, &writes_output()).await;
    assert_eq!(
        exec::read_text(&server, &result.stdout_digest).await,
        "ran\n"
    );
    let file = &result.output_files[0];
    assert_eq!(file.path, "out/greeting");
    assert_eq!(
        exec::read_blob(&server, file.digest.as_ref().unwrap()).await,
        b"hello from a bot"
    );
    let metadata = result.execution_metadata.unwrap();
    assert_eq!(metadata.worker, "bot-a");
    for (what, t) in [
        ("queued", &metadata.queued_timestamp),
        ("worker start", &metadata.worker_start_timestamp),
        ("input fetch start", &metadata.input_fetch_start_timestamp),
        ("execution start", &metadata.execution_start_timestamp),
        ("upload done", &metadata.output_upload_completed_timestamp),
        ("worker done", &metadata.worker_completed_timestamp),
    ] {
        assert!(t.is_some(), "{what} timestamp missing");
    }
    // The second run is a cache hit on the server.
    let again = exec::run(&server, &writes_output()).await;
    assert!(again.cached_result);
}

#[tokio::test]
async fn actions_spread_over_several_workers() {
    let server = scheduler_only(30, 3).await;
    let _a = WorkerProcess::start(&server.url(), "bot-a", 1);
    let _b = WorkerProcess::start(&server.url(), "bot-b", 1);
    let signals = exec::outside_dir();
    let go = signals.path().join("go");
    // Two actions that each hold their slot until both have started: only two single-slot
    // bots running them at once lets either finish.
    let started = exec::shared_file(&signals, "started");
    let action = |n: usize| {
        sh(format!(
            "echo {n} >> '{}'; {}",
            started.display(),
            exec::wait_for_file(&go)
        ))
    };
    let runs: Vec<_> = (0..2)
        .map(|n| {
            let prepared = action(n).build();
            let server = &server;
            async move {
                prepared.upload(server).await;
                exec::execute(server, prepared.request()).await
            }
        })
        .collect();
    let watcher = async {
        exec::eventually("both actions started", || exec::lines(&started).len() == 2).await;
        std::fs::write(&go, "").unwrap();
    };
    let (responses, ()) = tokio::join!(futures::future::join_all(runs), watcher);
    let mut workers: Vec<String> = responses
        .into_iter()
        .map(|r| r.result.unwrap().execution_metadata.unwrap().worker)
        .collect();
    workers.sort();
    assert_eq!(workers, ["bot-a", "bot-b"]);
}

#[tokio::test]
async fn bots_that_describe_themselves_badly_are_refused() {
    let server = scheduler_only(30, 3).await;
    let mut client = rw::bots_client::BotsClient::new(server.channel().await);
    let create = |session: rw::BotSession| rw::CreateBotSessionRequest {
        parent: String::new(),
        bot_session: Some(session),
    };
    let good = rw::BotSession {
        bot_id: "b".into(),
        status: rw::BotStatus::Ok as i32,
        worker: Some(common::bots::worker_description(1)),
        ..Default::default()
    };
    let named = rw::BotSession {
        name: "botSessions/mine".into(),
        ..good.clone()
    };
    expect_status(
        client.create_bot_session(create(named)).await,
        Code::InvalidArgument,
        &["name"],
    );
    let anonymous = rw::BotSession {
        bot_id: String::new(),
        ..good.clone()
    };
    expect_status(
        client.create_bot_session(create(anonymous)).await,
        Code::InvalidArgument,
        &["bot_id"],
    );
    let mut worker = common::bots::worker_description(1);
    worker.properties.retain(|p| p.key != "slots");
    worker.properties.push(rw::worker::Property {
        key: "slots".into(),
        value: "many".into(),
    });
    let bad_slots = rw::BotSession {
        worker: Some(worker),
        ..good.clone()
    };
    expect_status(
        client.create_bot_session(create(bad_slots)).await,
        Code::InvalidArgument,
        &["slots"],
    );
    let elsewhere = rw::BotSession {
        worker: Some(rw::Worker::default()),
        ..good.clone()
    };
    expect_status(
        client.create_bot_session(create(elsewhere)).await,
        Code::FailedPrecondition,
        &["no worker pool accepts"],
    );
    let unknown_instance = rw::CreateBotSessionRequest {
        parent: "nowhere".into(),
        bot_session: Some(good.clone()),
    };
    expect_status(
        client.create_bot_session(unknown_instance).await,
        Code::InvalidArgument,
        &["nowhere"],
    );
    let update = |name: &str| rw::UpdateBotSessionRequest {
        name: name.into(),
        bot_session: Some(rw::BotSession {
            name: name.into(),
            ..good.clone()
        }),
        update_mask: None,
    };
    expect_status(
        client
            .update_bot_session(update("botSessions/unknown"))
            .await,
        Code::NotFound,
        &["create a new one"],
    );
    expect_status(
        client.update_bot_session(update("no-session-here")).await,
        Code::InvalidArgument,
        &["bot session name"],
    );
}

#[tokio::test]
async fn leases_a_bot_was_never_given_are_cancelled() {
    let server = scheduler_only(30, 3).await;
    let mut bot = HandBot::join(&server, "liar").await;
    let invented = rw::Lease {
        id: "operations/invented".into(),
        state: rw::LeaseState::Active as i32,
        ..Default::default()
    };
    let reply = bot.update(vec![invented]).await.unwrap();
    let lease = reply
        .leases
        .iter()
        .find(|l| l.id == "operations/invented")
        .expect("the reply answers for the invented lease");
    assert_eq!(lease.state, rw::LeaseState::Cancelled as i32);
    assert_eq!(server.ctx.execution.as_ref().unwrap().bots().leases(), 0);
}

/// Runs `action` through a hand bot that reports `report(lease)` for it; returns the
/// client's response.
async fn report_for(
    server: &TestServer,
    action: &ActionBuilder,
    report: impl FnOnce(&rw::Lease) -> rw::Lease,
) -> re::ExecuteResponse {
    let prepared = action.build();
    prepared.upload(server).await;
    let stream = exec::start(server, prepared.request()).await.unwrap();
    let mut bot = HandBot::join(server, "reporter").await;
    let lease = bot.take_lease().await;
    bot.update(vec![report(&lease)]).await.unwrap();
    let updates = exec::collect(stream).await;
    exec::response(updates.last().unwrap())
}

fn completed(lease: &rw::Lease, result: prost_types::Any) -> rw::Lease {
    rw::Lease {
        id: lease.id.clone(),
        state: rw::LeaseState::Completed as i32,
        result: Some(result),
        status: Some(Default::default()),
        ..Default::default()
    }
}

fn result_any(result: &re::ActionResult) -> prost_types::Any {
    rexd::execution::bots::lease::encode_result(result)
}

#[tokio::test]
async fn bad_results_from_a_bot_fail_the_action_and_are_never_cached() {
    let server = scheduler_only(30, 3).await;
    let action = sh("true");
    let wrong_type = report_for(&server, &action, |l| {
        completed(
            l,
            prost_types::Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.Digest".into(),
                value: Vec::new(),
            },
        )
    })
    .await;
    assert_eq!(exec::status_code(&wrong_type), Code::Unavailable);
    assert!(wrong_type.status.unwrap().message.contains("expects"));

    let garbage = report_for(&server, &sh("true; echo 1"), |l| {
        completed(
            l,
            prost_types::Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult".into(),
                value: vec![0xff; 7],
            },
        )
    })
    .await;
    assert!(garbage.status.unwrap().message.contains("does not decode"));

    let escaping = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "../../etc/shadow".into(),
            digest: Some(common::digest(b"")),
            ..Default::default()
        }],
        ..Default::default()
    };
    let outside = report_for(&server, &sh("true; echo 2"), |l| {
        completed(l, result_any(&escaping))
    })
    .await;
    assert!(
        outside
            .status
            .unwrap()
            .message
            .contains("leaves the exec root")
    );

    let absent = re::ActionResult {
        stdout_digest: Some(common::digest(b"never uploaded")),
        ..Default::default()
    };
    let missing = report_for(&server, &sh("true; echo 3"), |l| {
        completed(l, result_any(&absent))
    })
    .await;
    assert!(missing.status.unwrap().message.contains("not in the CAS"));

    // None of them reached the action cache.
    let mut ac = server.action_cache().await;
    for a in [
        sh("true"),
        sh("true; echo 1"),
        sh("true; echo 2"),
        sh("true; echo 3"),
    ] {
        let lookup = ac
            .get_action_result(re::GetActionResultRequest {
                action_digest: Some(a.build().digest),
                ..Default::default()
            })
            .await;
        expect_status(lookup, Code::NotFound, &[]);
    }
}

#[tokio::test]
async fn leases_of_expired_sessions_are_requeued_until_the_retry_limit() {
    let server = scheduler_only(1, 1).await;
    let prepared = sh("true; echo lost").build();
    prepared.upload(&server).await;
    let stream = exec::start(&server, prepared.request()).await.unwrap();
    // Two bots each take the lease and fall silent; the second loss is one too many.
    let mut first = HandBot::join(&server, "silent-1").await;
    let lease = first.take_lease().await;
    let mut second = HandBot::join(&server, "silent-2").await;
    let again = second.take_lease().await;
    assert_eq!(again.id, lease.id, "the lost lease went back to the queue");
    let updates = exec::collect(stream).await;
    let response = exec::response(updates.last().unwrap());
    assert_eq!(exec::status_code(&response), Code::Unavailable);
    assert!(response.status.unwrap().message.contains("lost 2 times"));
    // The first bot's late result is refused: its session is gone.
    let late = first
        .update(vec![completed(
            &lease,
            result_any(&re::ActionResult::default()),
        )])
        .await;
    expect_status(late, Code::NotFound, &["expired"]);
}

#[tokio::test]
async fn a_killed_worker_s_action_completes_on_another() {
    let server = scheduler_only(2, 3).await;
    let signals = exec::outside_dir();
    let started = exec::shared_file(&signals, "started");
    let go = signals.path().join("go");
    let prepared = sh(format!(
        "echo x >> '{}'; {}; echo finished",
        started.display(),
        exec::wait_for_file(&go)
    ))
    .build();
    prepared.upload(&server).await;
    let mut doomed = WorkerProcess::start(&server.url(), "doomed", 1);
    let stream = exec::start(&server, prepared.request()).await.unwrap();
    exec::eventually("the action started on the first worker", || {
        !exec::lines(&started).is_empty()
    })
    .await;
    doomed.kill(); // SIGKILL: no goodbye, the session just stops reporting.
    std::fs::write(&go, "").unwrap();
    let _survivor = WorkerProcess::start(&server.url(), "survivor", 1);
    let updates = exec::collect(stream).await;
    let response = exec::response(updates.last().unwrap());
    let result = response.result.expect("a result");
    assert_eq!(result.exit_code, 0, "{:?}", response.status);
    assert_eq!(result.execution_metadata.unwrap().worker, "survivor");
    assert_eq!(
        exec::read_text(&server, &result.stdout_digest).await,
        "finished\n"
    );
}

#[tokio::test]
async fn cancelling_an_operation_kills_the_action_on_its_worker() {
    let server = scheduler_only(30, 3).await;
    let worker = WorkerProcess::start(&server.url(), "bot-c", 1);
    let signals = exec::outside_dir();
    let pid_file = exec::shared_file(&signals, "pid");
    let prepared = sh(format!(
        "echo $$ > '{}'; exec sleep 600",
        pid_file.display()
    ))
    .build();
    prepared.upload(&server).await;
    let mut stream = exec::start(&server, prepared.request()).await.unwrap();
    let first = exec::next_update(&mut stream).await;
    exec::eventually("the action started", || !exec::lines(&pid_file).is_empty()).await;
    let pid: i32 = exec::lines(&pid_file)[0].parse().unwrap();
    exec::operations_client(&server)
        .await
        .cancel_operation(rexd::proto::longrunning::CancelOperationRequest {
            name: first.name.clone(),
        })
        .await
        .unwrap();
    let mut last = first;
    while !last.done {
        last = exec::next_update(&mut stream).await;
    }
    assert_eq!(exec::status_code(&exec::response(&last)), Code::Cancelled);
    exec::eventually("the action's process died on the worker", || {
        !exec::process_alive(pid)
    })
    .await;
    exec::eventually("the worker logged the cancelled lease", || {
        worker.log().contains("cancelled")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_with_the_bot_role_open_bot_sessions() {
    use rexd::auth::{Role, TokenConfig};
    use sha2::Digest as _;
    let token = |name: &str, secret: &str, roles: &[Role]| TokenConfig {
        name: name.into(),
        sha256: Some(hex::encode(sha2::Sha256::digest(secret.as_bytes()))),
        file: None,
        env: None,
        roles: [("*".to_string(), roles.iter().copied().collect())].into(),
    };
    let server = TestServer::start_with(|c| {
        c.execution.local_workers = Some(0);
        c.auth.tokens = vec![
            token(
                "builder",
                "builder-secret",
                &[Role::Read, Role::Write, Role::Execute],
            ),
            token("bot", "bot-secret", &[Role::Read, Role::Write, Role::Bot]),
        ];
    })
    .await;
    let secrets = tempfile::tempdir().unwrap();
    let with_token = |bot: &str, secret: &str| {
        let file = secrets.path().join(bot);
        std::fs::write(&file, secret).unwrap();
        WorkerProcess::start_in(
            None,
            &server.url(),
            bot,
            1,
            "plain",
            &format!("token_file = {file:?}\n"),
        )
    };
    let mut builder = with_token("not-a-bot", "builder-secret");
    let status = builder.child.wait().unwrap();
    assert!(
        !status.success(),
        "a worker without the bot role kept running"
    );
    assert!(
        builder.log().contains("PermissionDenied"),
        "{}",
        builder.log()
    );
    let bot = with_token("real-bot", "bot-secret");
    exec::eventually("the bot opened its session", || {
        bot.log().contains("bot session open")
    })
    .await;
    assert_eq!(server.ctx.execution.as_ref().unwrap().bots().sessions(), 1);
}
