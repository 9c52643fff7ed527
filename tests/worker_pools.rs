//! Worker pools (`[[execution.pools]]`): bots join the pool their properties fit, an action
//! goes only to bots of a pool that offers its platform, and what fits no pool is refused
//! with a message naming what is missing.

mod common;

use common::bots::HandBot;
use common::exec::{self, ActionBuilder, sh};
use common::{TestServer, expect_status};
use rexd::config::PoolConfig;
use rexd::proto::remote_execution as re;
use rexd::proto::remoteworkers as rw;
use tonic::Code;

fn properties(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A scheduling-only server with a plain pool and a GPU pool.
async fn pooled_server() -> TestServer {
    TestServer::start_with(|c| {
        c.execution.local_workers = Some(0);
        c.execution.pools = vec![
            PoolConfig {
                name: "cpu".into(),
                properties: properties(&[("OSFamily", "linux")]).into_iter().collect(),
            },
            PoolConfig {
                name: "gpu".into(),
                properties: properties(&[("OSFamily", "linux"), ("gpu", "yes")])
                    .into_iter()
                    .collect(),
            },
        ];
    })
    .await
}

fn offering(pairs: &[(&str, &str)]) -> rw::Worker {
    rexd::execution::bots::lease::worker_with(
        &properties(pairs).into_iter().collect(),
        [("slots", "1".to_string())],
    )
}

/// The digest of the Action a lease carries.
fn leased_digest(lease: &rw::Lease) -> re::Digest {
    let (digest, action) = rexd::execution::bots::lease::decode_payload(lease).unwrap();
    assert!(action.is_some(), "the lease carries the Action itself");
    digest.to_proto()
}

/// Reports `lease` completed with exit code 0 and nothing else.
async fn complete(bot: &mut HandBot, lease: &rw::Lease) {
    let done = rw::Lease {
        id: lease.id.clone(),
        state: rw::LeaseState::Completed as i32,
        result: Some(rexd::execution::bots::lease::encode_result(
            &re::ActionResult::default(),
        )),
        status: Some(Default::default()),
        ..Default::default()
    };
    bot.update(vec![done]).await.expect("reporting the result");
}

fn gpu_action() -> ActionBuilder {
    ActionBuilder {
        platform: properties(&[("gpu", "yes")]),
        ..sh("echo on a gpu")
    }
}

#[tokio::test]
async fn an_action_goes_only_to_a_bot_of_a_pool_that_offers_its_platform() {
    let server = pooled_server().await;
    let (gpu, plain) = (gpu_action().build(), sh("echo anywhere").build());
    gpu.upload(&server).await;
    plain.upload(&server).await;
    // The GPU action is queued first, ahead of the plain one.
    let gpu_run = exec::start(&server, gpu.request()).await.unwrap();
    let plain_run = exec::start(&server, plain.request()).await.unwrap();

    let mut cpu_bot = HandBot::join_as(&server, "cpu-bot", offering(&[("OSFamily", "linux")]))
        .await
        .unwrap();
    let lease = cpu_bot.take_lease().await;
    assert_eq!(
        leased_digest(&lease),
        plain.digest,
        "a bot of the cpu pool was handed the GPU action"
    );
    let gpu_offer = offering(&[("OSFamily", "linux"), ("gpu", "yes")]);
    let mut gpu_bot = HandBot::join_as(&server, "gpu-bot", gpu_offer)
        .await
        .unwrap();
    let gpu_lease = gpu_bot.take_lease().await;
    assert_eq!(leased_digest(&gpu_lease), gpu.digest);

    complete(&mut cpu_bot, &lease).await;
    complete(&mut gpu_bot, &gpu_lease).await;
    for (run, executor) in [(plain_run, "cpu/cpu-bot"), (gpu_run, "gpu/gpu-bot")] {
        let updates = exec::collect(run).await;
        let response = exec::response(updates.last().unwrap());
        assert_eq!(exec::status_code(&response), Code::Ok);
        let metadata = response.result.unwrap().execution_metadata.unwrap();
        assert_eq!(
            metadata.worker, executor,
            "the metadata names the pool and bot"
        );
    }
    let bots = server.ctx.execution.as_ref().unwrap().bots();
    assert_eq!(bots.sessions(), 2);
    assert_eq!(bots.leases(), 0);
}

#[tokio::test]
async fn what_fits_no_pool_is_refused_with_what_each_pool_lacks() {
    let server = pooled_server().await;
    let wrong = ActionBuilder {
        platform: properties(&[("gpu", "no")]),
        ..sh("true")
    }
    .build();
    wrong.upload(&server).await;
    expect_status(
        exec::start(&server, wrong.request()).await,
        Code::FailedPrecondition,
        &[
            r#"pool "cpu" does not offer "gpu""#,
            r#"pool "gpu" offers gpu="yes", not "no""#,
        ],
    );
    let stray = HandBot::join_as(&server, "stray", offering(&[("OSFamily", "windows")]))
        .await
        .map(|_| ());
    expect_status(
        stray,
        Code::FailedPrecondition,
        &["no worker pool accepts", "gpu"],
    );

    let mut capabilities =
        rexd::proto::remote_execution::capabilities_client::CapabilitiesClient::new(
            server.channel().await,
        );
    let offered = capabilities
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .execution_capabilities
        .unwrap()
        .supported_node_properties;
    assert_eq!(offered, vec!["OSFamily".to_string(), "gpu".to_string()]);
}

#[test]
fn local_workers_that_fit_no_pool_are_a_config_error() {
    let text = r#"
        [execution]
        local_workers = 2
        platform = { OSFamily = "linux" }
        [[execution.pools]]
        name = "gpu"
        properties = { gpu = "yes" }
    "#;
    let config = rexd::config::Config::from_toml(text).expect("the file parses");
    let err = rexd::config::Settings::new(config).err().expect("refused");
    assert!(err.to_string().contains("fits no pool"), "{err}");
}
