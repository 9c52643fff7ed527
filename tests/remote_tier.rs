//! The object-store tier against a real S3 server (Garage): blobs and action results reach
//! the bucket, a second frontend with an empty disk serves them, ranged reads, one GET for
//! concurrent readers, the record of known objects, and a tampered object refused.

mod common;

use common::garage::Garage;
use common::storage::{MIB, batch_read, bs_read, bs_write, sha};
use common::{TestServer, digest, pseudo_random};
use object_store::ObjectStore;
use object_store::path::Path;
use rexd::proto::bytestream::ReadRequest;
use rexd::proto::remote_execution as re;
use rexd::storage::remote::Op;
use tonic::Code;

async fn frontend(garage: &Garage, prefix: &str) -> TestServer {
    let remote = garage.remote_config(prefix);
    TestServer::start_with(move |c| c.storage.remote = Some(remote)).await
}

fn blob_key(prefix: &str, data: &[u8]) -> Path {
    let d = sha(data);
    Path::from(format!("{prefix}/cas/sha256/{}-{}", d.hash_hex(), d.size()))
}

async fn batch_update(server: &TestServer, blobs: &[&[u8]]) -> Vec<Code> {
    let requests = blobs
        .iter()
        .map(|b| re::batch_update_blobs_request::Request {
            digest: Some(digest(b)),
            data: b.to_vec().into(),
            ..Default::default()
        })
        .collect();
    let reply = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    reply
        .responses
        .iter()
        .map(|r| Code::from(r.status.as_ref().unwrap().code))
        .collect()
}

async fn ranged_read(server: &TestServer, data: &[u8], offset: i64, limit: i64) -> Vec<u8> {
    let d = digest(data);
    let mut stream = server
        .bytestream()
        .await
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: offset,
            read_limit: limit,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        out.extend_from_slice(&msg.data);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_frontend_serves_what_the_first_stored() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let first = frontend(&garage, "shared").await;
    let small = b"small blob through BatchUpdateBlobs".to_vec();
    // Over the multipart part size, so the upload goes in parts.
    let large = pseudo_random(20 * MIB, 7);
    assert_eq!(batch_update(&first, &[&small]).await, vec![Code::Ok]);
    bs_write(&first, &large).await.unwrap();
    let bucket = garage.client();
    for data in [&small[..], &large[..]] {
        let meta = bucket.head(&blob_key("shared", data)).await.unwrap();
        assert_eq!(
            meta.size,
            data.len() as u64,
            "write-through: in the bucket once acknowledged"
        );
    }
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/large".into(),
            digest: Some(digest(&large)),
            ..Default::default()
        }],
        stdout_digest: Some(digest(&small)),
        ..Default::default()
    };
    let action = digest(b"an action digest");
    first
        .action_cache()
        .await
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(action.clone()),
            action_result: Some(result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();

    // A frontend with an empty disk on the same bucket and prefix.
    let second = frontend(&garage, "shared").await;
    assert!(!second.ctx.cas.contains(&sha(&large)));
    let unknown = digest(b"never uploaded");
    let missing = common::missing_of(
        &second,
        vec![digest(&small), digest(&large), unknown.clone()],
    )
    .await;
    assert_eq!(missing, vec![unknown.clone()]);
    let remote = second.ctx.store.remote().unwrap().clone();
    let heads = remote.sent(Op::Head);
    let missing = common::missing_of(
        &second,
        vec![digest(&small), digest(&large), unknown.clone()],
    )
    .await;
    assert_eq!(missing, vec![unknown]);
    assert_eq!(
        remote.sent(Op::Head),
        heads + 1,
        "known objects need no HEAD; only the unknown one is asked again"
    );

    let got = second
        .action_cache()
        .await
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(action.clone()),
            inline_stdout: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files, result.output_files);
    assert_eq!(&got.stdout_raw[..], &small[..], "inlined from the bucket");

    assert_eq!(
        batch_read(&second, &digest(&small)).await,
        (Code::Ok, small.clone())
    );
    assert_eq!(
        ranged_read(&second, &large, 3 * MIB as i64, 1000).await,
        large[3 * MIB..3 * MIB + 1000]
    );
    let (data, end) = bs_read(&second, &digest(&large)).await;
    end.unwrap();
    assert!(data == large, "the whole blob, streamed from the bucket");
    assert!(
        second.ctx.cas.contains(&sha(&large)),
        "and now on the local disk"
    );
    let gets = remote.sent(Op::Get);
    let (again, end) = bs_read(&second, &digest(&large)).await;
    end.unwrap();
    assert!(again == large);
    assert_eq!(remote.sent(Op::Get), gets, "a second read is local");
    common::storage::assert_cas_files_are_complete_blobs(second.data_dir.path());

    // Another prefix is another cache.
    let other = frontend(&garage, "other").await;
    assert_eq!(
        common::missing_of(&other, vec![digest(&small)]).await.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_a_blob_share_one_get() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let first = frontend(&garage, "p").await;
    let large = pseudo_random(32 * MIB, 3);
    bs_write(&first, &large).await.unwrap();
    let second = frontend(&garage, "p").await;
    let remote = second.ctx.store.remote().unwrap().clone();
    let d = digest(&large);
    let request = move || ReadRequest {
        resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
        read_offset: 0,
        read_limit: 0,
    };
    // The first reader starts the fill and takes one message, then stops reading, so the
    // fill waits on it with most of the blob still to come.
    let mut leader = second
        .bytestream()
        .await
        .read(request())
        .await
        .unwrap()
        .into_inner();
    let mut data = leader.message().await.unwrap().unwrap().data.to_vec();
    let mut client = second.bytestream().await;
    let follower = tokio::spawn(async move {
        let mut stream = client.read(request()).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.message().await.unwrap() {
            out.extend_from_slice(&msg.data);
        }
        out
    });
    common::exec::eventually("the second reader joins the fill", || {
        remote.fetches.joined() == 1
    })
    .await;
    while let Some(msg) = leader.message().await.unwrap() {
        data.extend_from_slice(&msg.data);
    }
    assert!(data == large);
    assert!(follower.await.unwrap() == large);
    assert_eq!(remote.sent(Op::Get), 1, "one GET served both readers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_object_is_never_served() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let first = frontend(&garage, "t").await;
    let blob = pseudo_random(2 * MIB, 11);
    bs_write(&first, &blob).await.unwrap();
    let small = b"small and tampered".to_vec();
    assert_eq!(batch_update(&first, &[&small]).await, vec![Code::Ok]);
    // Someone with write access to the bucket replaces both with other bytes of the same size.
    let bucket = garage.client();
    for data in [&blob[..], &small[..]] {
        let mut forged = data.to_vec();
        forged[data.len() / 2] ^= 0xff;
        bucket
            .put(&blob_key("t", data), forged.into())
            .await
            .unwrap();
    }
    let second = frontend(&garage, "t").await;
    let (_, end) = bs_read(&second, &digest(&blob)).await;
    let status = end.expect_err("a read of a tampered blob fails");
    assert!(
        status.message().contains("does not match its digest"),
        "{status:?}"
    );
    assert!(
        !second.ctx.cas.contains(&sha(&blob)),
        "nothing tampered lands on disk"
    );
    let (code, data) = batch_read(&second, &digest(&small)).await;
    assert_eq!(code, Code::NotFound);
    assert!(data.is_empty());
    common::storage::assert_cas_files_are_complete_blobs(second.data_dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_references_are_shared_and_an_empty_disk_loses_nothing() {
    use common::asset::{assert_found, fetch_dir, push_blob, push_dir, tree};
    let Some(garage) = Garage::start() else {
        return;
    };
    let first = frontend(&garage, "assets").await;
    let blob = b"a pushed asset".to_vec();
    common::upload_blobs(&first, &[&blob]).await;
    push_blob(&first, &["https://example.com/a.tgz"], &[], &blob)
        .await
        .unwrap();
    let (root, blobs) = tree(b"file a", b"file b");
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    common::upload_blobs(&first, &refs).await;
    push_dir(&first, "https://example.com/tree", &root)
        .await
        .unwrap();

    // The first frontend's machine is lost; a new one starts on an empty disk.
    drop(first.stop().await);
    let second = frontend(&garage, "assets").await;
    let reply = common::asset::fetch_blob(&second, &["https://example.com/a.tgz"], &[]).await;
    assert_found(reply, &blob);
    let dir = fetch_dir(&second, "https://example.com/tree")
        .await
        .unwrap();
    assert_eq!(dir.root_directory_digest, Some(root.clone()));
    // Qualifiers are part of the identity: another qualifier set is another reference.
    let other = common::asset::fetch_blob(
        &second,
        &["https://example.com/a.tgz"],
        &[("vcs.branch", "x")],
    )
    .await;
    assert_eq!(
        other
            .map(|r| r.status.unwrap_or_default().code)
            .unwrap_or_else(|s| s.code() as i32),
        Code::NotFound as i32
    );
    let missing = common::missing_of(&second, refs.iter().map(|b| digest(b)).collect()).await;
    assert!(
        missing.is_empty(),
        "every blob of the tree is still served: {missing:?}"
    );
    let got = second
        .cas()
        .await
        .get_tree(re::GetTreeRequest {
            root_digest: Some(root),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.directories.len(),
        2,
        "GetTree reads the tree from the bucket"
    );
}
