//! The object-store tier when things go wrong or grow old, against a real Garage: an outage
//! (local reads go on, write-through uploads fail with UNAVAILABLE and leave nothing
//! acknowledged, health says degraded), the write-back queue surviving a restart and
//! draining when the store returns, and the age-based sweep with refresh of objects in use.

mod common;

use std::time::{Duration, SystemTime};

use common::exec::eventually;
use common::garage::Garage;
use common::storage::{MIB, bs_read, bs_write, sha};
use common::{TestServer, digest, pseudo_random};
use object_store::ObjectStore;
use object_store::path::Path;
use rexd::config::WritePolicy;
use rexd::proto::remote_execution as re;
use rexd::storage::remote::{Op, sweep};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn blob_key(prefix: &str, data: &[u8]) -> Path {
    let d = sha(data);
    Path::from(format!("{prefix}/cas/sha256/{}-{}", d.hash_hex(), d.size()))
}

async fn batch_update(server: &TestServer, data: &[u8]) -> Code {
    let reply = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(data)),
                data: data.to_vec().into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    Code::from(reply.responses[0].status.as_ref().unwrap().code)
}

async fn object_store_health(server: &TestServer) -> ServingStatus {
    let reply = HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: rexd::server::REMOTE_HEALTH_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(reply.status).unwrap()
}

async fn wait_for_health(server: &TestServer, wanted: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while object_store_health(server).await != wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never became {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_degrades_but_acknowledges_nothing_the_bucket_lacks() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let remote = garage.remote_config("o");
    let server = TestServer::start_with(move |c| c.storage.remote = Some(remote)).await;
    let cached = pseudo_random(3 * MIB, 5);
    bs_write(&server, &cached).await.unwrap();
    assert_eq!(object_store_health(&server).await, ServingStatus::Serving);

    garage.stop();
    let (data, end) = bs_read(&server, &digest(&cached)).await;
    end.unwrap();
    assert!(data == cached, "a locally cached blob still reads");

    let fresh = b"uploaded during the outage".to_vec();
    assert_eq!(batch_update(&server, &fresh).await, Code::Unavailable);
    let status = bs_write(&server, &pseudo_random(MIB, 9)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("object store"), "{status:?}");
    // A blob of several parts, streamed to the bucket as it arrives, is refused as well.
    let large = pseudo_random(12 * MIB, 10);
    let status = bs_write(&server, &large).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!server.ctx.cas.contains(&sha(&large)));
    assert!(
        !server.ctx.cas.contains(&sha(&fresh)),
        "what was refused is not kept either"
    );
    let missing = server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&fresh), digest(&cached)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(
        missing,
        vec![digest(&fresh)],
        "the refused upload is reported missing"
    );
    wait_for_health(&server, ServingStatus::NotServing).await;

    garage.restart();
    assert_eq!(batch_update(&server, &fresh).await, Code::Ok);
    bs_write(&server, &large).await.unwrap();
    let meta = garage.client().head(&blob_key("o", &large)).await.unwrap();
    assert_eq!(
        meta.size,
        large.len() as u64,
        "streamed in parts once the store is back"
    );
    wait_for_health(&server, ServingStatus::Serving).await;
    garage.client().head(&blob_key("o", &fresh)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_survives_a_restart_and_drains_when_the_store_returns() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let mut remote = garage.remote_config("wb");
    remote.write_policy = WritePolicy::Back;
    let config = remote.clone();
    let server = TestServer::start_with(move |c| c.storage.remote = Some(config)).await;
    garage.stop();
    let blob = pseudo_random(2 * MIB, 21);
    bs_write(&server, &blob).await.unwrap();
    let small = b"write-back, small".to_vec();
    assert_eq!(
        batch_update(&server, &small).await,
        Code::Ok,
        "acknowledged on local durability"
    );
    server
        .action_cache()
        .await
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(digest(b"write-back action")),
            action_result: Some(re::ActionResult {
                stdout_digest: Some(digest(&small)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        server.ctx.store.queued_uploads(),
        3,
        "two blobs and an action result"
    );

    // A restart (the queue is on disk), then the store comes back.
    let data_dir = server.stop().await;
    let config = remote.clone();
    let server = TestServer::start_in(data_dir, move |c| c.storage.remote = Some(config)).await;
    assert_eq!(
        server.ctx.store.queued_uploads(),
        3,
        "the queue survived the restart"
    );
    garage.restart();
    eventually("the write-back queue drains", || {
        server.ctx.store.queued_uploads() == 0
    })
    .await;
    let bucket = garage.client();
    bucket.head(&blob_key("wb", &blob)).await.unwrap();
    bucket.head(&blob_key("wb", &small)).await.unwrap();

    // Another frontend sees the drained result.
    let reader = TestServer::start_with(move |c| c.storage.remote = Some(remote)).await;
    let got = reader
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(digest(b"write-back action")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stdout_digest, Some(digest(&small)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_expires_old_objects_and_refreshes_those_in_use() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let mut config = garage.remote_config("age");
    config.max_age_days = 10;
    let server = TestServer::start_with(move |c| c.storage.remote = Some(config)).await;
    let (hot, cold) = (b"hot blob".to_vec(), b"cold blob".to_vec());
    assert_eq!(batch_update(&server, &hot).await, Code::Ok);
    assert_eq!(batch_update(&server, &cold).await, Code::Ok);
    let remote = server.ctx.store.remote().unwrap().clone();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);

    assert_eq!(
        sweep::sweep_once(&remote, now).await.unwrap(),
        0,
        "nothing is old yet"
    );
    // Six days on, past half the age: a use of the hot blob copies it onto itself.
    let copies = remote.sent(Op::Copy);
    assert!(
        sweep::refresh(&remote, &blob_key("age", &hot), now + 6 * day)
            .await
            .unwrap()
    );
    assert!(
        !sweep::refresh(&remote, &blob_key("age", &cold), now + day)
            .await
            .unwrap(),
        "young: left alone"
    );
    assert_eq!(remote.sent(Op::Copy), copies + 1);
    let bucket = garage.client();
    assert_eq!(
        bucket.head(&blob_key("age", &hot)).await.unwrap().size,
        hot.len() as u64,
        "intact after the copy"
    );

    // Eleven days on, everything written today is past the age and swept.
    let deleted = sweep::sweep_once(&remote, now + 11 * day).await.unwrap();
    assert!(deleted >= 2, "deleted {deleted}");
    for data in [&hot, &cold] {
        assert!(matches!(
            bucket.head(&blob_key("age", data)).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
}
