//! The disk budget under pressure, through the wire with the server in-process: LRU eviction,
//! pins that keep what a client was just told about, leases on blobs being read and on a
//! running action's inputs, and action-cache entries whose outputs were evicted.

mod common;

use bytesize::ByteSize;
use common::exec::{
    collect, eventually, outside_dir, read_text, response, sh, start, start_plain, wait_for_file,
};
use common::storage::*;
use common::{digest, pseudo_random, upload_blobs};
use rexd::proto::bytestream::ReadRequest;
use rexd::proto::remote_execution as re;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_is_respected_while_writing_twenty_times_the_budget() {
    const BUDGET: u64 = MIB as u64;
    const BLOB: usize = 64 * KIB;
    let server = start_store(|c| c.storage.max_size = ByteSize::kib(1024)).await;
    let dir = server.data_dir.path().to_path_buf();
    let count = 20 * MIB / BLOB;
    let mut last = Vec::new();
    for i in 0..count {
        let data = pseudo_random(BLOB, 10_000 + i as u64);
        if i % 2 == 0 {
            upload_blobs(&server, &[&data]).await;
        } else {
            bs_write(&server, &data).await.unwrap();
        }
        let disk = cas_disk_bytes(&dir);
        let indexed_bytes = server.ctx.cas.index().total_bytes();
        assert!(
            disk <= BUDGET + BLOB as u64,
            "after upload {i}: {disk} bytes on disk, over the budget {BUDGET} plus one blob"
        );
        assert!(
            indexed_bytes <= BUDGET + BLOB as u64,
            "after upload {i}: the index counts {indexed_bytes} bytes"
        );
        assert_eq!(
            disk, indexed_bytes,
            "after upload {i}: the files on disk and the index disagree"
        );
        last = data;
    }
    // The newest blob is never the victim of its own write.
    assert_readable(&server, &last).await;
    let stats = server.ctx.cas.stats().snapshot();
    assert!(stats.evictions > 0, "{stats:?}");
    assert_eq!(stats.bytes_in, (count * BLOB) as u64, "{stats:?}");
    assert_eq!(
        stats.evicted_bytes + server.ctx.cas.index().total_bytes(),
        stats.bytes_in,
        "every byte written is either still stored or was evicted: {stats:?}"
    );
    assert!(tmp_entries(&dir).is_empty(), "{:?}", tmp_entries(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_follows_least_recent_use() {
    // Five blobs fill the budget; each further write evicts exactly one blob.
    let server = start_store(|c| exact_budget(c, 5)).await;
    let old = thousand_byte_blobs(5, 100);
    for blob in &old {
        upload_blobs(&server, &[blob]).await;
    }
    // Use four of them, each through another path, in the order 0, 1, 2, 3; blob 4, written
    // last, is now the least recently used.
    let (data, end) = bs_read(&server, &digest(&old[0])).await;
    end.unwrap();
    assert_eq!(data, old[0]);
    assert_readable(&server, &old[1]).await;
    assert!(find_missing(&server, &[&old[2]]).await.is_empty());
    let response = bs_write(&server, &old[3]).await.unwrap();
    assert_eq!(
        response.committed_size, 1000,
        "an upload of a stored blob ends early"
    );
    assert!(
        old.iter().all(|b| indexed(&server, b)),
        "nothing evicted yet"
    );

    // Each new write now evicts the least recently used blob: 4, then 0, 1, 2, 3.
    let new = thousand_byte_blobs(5, 200);
    for (i, victim) in [4, 0, 1, 2, 3].into_iter().enumerate() {
        upload_blobs(&server, &[&new[i]]).await;
        let present: Vec<usize> = (0..5).filter(|&j| indexed(&server, &old[j])).collect();
        let mut expected: Vec<usize> = [4, 0, 1, 2, 3][i + 1..].to_vec();
        expected.sort();
        assert_eq!(
            present, expected,
            "after new write {i}, blob {victim} should have gone and nothing else"
        );
        assert!(!server.ctx.cas.blob_path(&sha(&old[victim])).exists());
        assert!(new[..=i].iter().all(|b| indexed(&server, b)));
    }
    let (code, _) = batch_read(&server, &digest(&old[0])).await;
    assert_eq!(code, Code::NotFound);
    assert_eq!(server.ctx.cas.stats().snapshot().evictions, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_down_to_low_water_keeps_the_recently_read_blob() {
    // The brief's scenario with a low-water mark that forces two evictions at once: A, B, C
    // written in that order, A read, D written -> B and C go, A stays.
    let server = start_store(|c| {
        c.storage.max_size = ByteSize::b(3500);
        c.storage.low_water_percent = 60; // 2100 bytes: writing D must free 1900
    })
    .await;
    let [a, b, c, d]: [Vec<u8>; 4] = thousand_byte_blobs(4, 300).try_into().unwrap();
    upload_blobs(&server, &[&a]).await;
    upload_blobs(&server, &[&b]).await;
    upload_blobs(&server, &[&c]).await;
    assert_readable(&server, &a).await;
    bs_write(&server, &d).await.unwrap();
    assert!(!indexed(&server, &b), "B was the least recently used");
    assert!(!indexed(&server, &c), "C was next");
    assert!(
        indexed(&server, &a),
        "A was read after B and C were written"
    );
    assert!(indexed(&server, &d));
    assert_eq!(cas_disk_bytes(server.data_dir.path()), 2000);
    assert_readable(&server, &a).await;
    assert_readable(&server, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_reported_present_are_kept_for_the_retention_time() {
    const BLOB: usize = 64 * KIB;
    let server = start_store(|c| {
        c.storage.max_size = ByteSize::kib(1024);
        c.storage.min_retention_secs = 3600;
    })
    .await;
    let pinned = pseudo_random(BLOB, 1);
    let unpinned = pseudo_random(BLOB, 2);
    upload_blobs(&server, &[&pinned, &unpinned]).await;
    assert!(find_missing(&server, &[&pinned]).await.is_empty());
    // Eight times the budget, uploaded (not asked about), so none of it is pinned.
    for i in 0..8 * MIB / BLOB {
        let data = pseudo_random(BLOB, 1000 + i as u64);
        if i % 2 == 0 {
            upload_blobs(&server, &[&data]).await;
        } else {
            bs_write(&server, &data).await.unwrap();
        }
        assert!(
            server.ctx.cas.index().total_bytes() <= (MIB + BLOB) as u64,
            "a single pinned blob must not stop eviction of the rest"
        );
    }
    assert!(server.ctx.cas.stats().snapshot().evictions > 0);
    assert!(
        !indexed(&server, &unpinned),
        "the unpinned blob was evicted"
    );
    assert_readable(&server, &pinned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_result_whose_output_was_evicted_is_not_found() {
    const BLOB: usize = 64 * KIB;
    let server = start_store(|c| c.storage.max_size = ByteSize::kib(1024)).await;
    let output = pseudo_random(BLOB, 7);
    upload_blobs(&server, &[&output]).await;
    let action = digest(b"an action whose output will be evicted");
    let result = re::ActionResult {
        output_files: vec![re::OutputFile {
            path: "out/file".into(),
            digest: Some(digest(&output)),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut ac = server.action_cache().await;
    ac.update_action_result(re::UpdateActionResultRequest {
        action_digest: Some(action.clone()),
        action_result: Some(result.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = re::GetActionResultRequest {
        action_digest: Some(action.clone()),
        ..Default::default()
    };
    let got = ac
        .get_action_result(get.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.output_files[0].digest, Some(digest(&output)));

    // Fill the store until the output is evicted.
    let mut i = 0;
    while indexed(&server, &output) {
        assert!(i < 64, "the output was never evicted");
        upload_blobs(&server, &[&pseudo_random(BLOB, 100 + i)]).await;
        i += 1;
    }
    let status = ac.get_action_result(get.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Uploading the output again makes the entry whole again.
    upload_blobs(&server, &[&output]).await;
    let got = ac.get_action_result(get).await.unwrap().into_inner();
    assert_eq!(got.output_files[0].digest, Some(digest(&output)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_being_read_is_not_evicted() {
    let server = start_store(|c| c.storage.max_size = ByteSize::mib(20)).await;
    let big = pseudo_random(16 * MIB, 1300);
    bs_write(&server, &big).await.unwrap();
    let d = digest(&big);
    let mut bs = server.bytestream().await;
    let mut stream = bs
        .read(ReadRequest {
            resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // One message in, then the read stalls on flow control with most of the blob unsent.
    let mut data = stream.message().await.unwrap().unwrap().data.to_vec();
    for i in 0..32u64 {
        bs_write(&server, &pseudo_random(MIB, 1400 + i))
            .await
            .unwrap();
    }
    assert!(server.ctx.cas.stats().snapshot().evictions > 0);
    assert!(
        indexed(&server, &big),
        "a blob was evicted while being read"
    );
    while let Some(msg) = stream.message().await.unwrap() {
        data.extend_from_slice(&msg.data);
    }
    assert!(data == big, "the read came back wrong");
    drop(stream);
    // Read to the end, it is an ordinary blob again, and the least recently used one.
    let mut i = 0;
    while indexed(&server, &big) {
        assert!(i < 8, "the blob stayed after its read ended");
        bs_write(&server, &pseudo_random(MIB, 1500 + i))
            .await
            .unwrap();
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_of_a_running_action_are_not_evicted() {
    const BLOB: usize = 64 * KIB;
    let server = start_plain(|c| {
        c.storage.max_size = ByteSize::kib(1024);
        c.storage.min_retention_secs = 0;
        c.execution.local_workers = Some(2);
    })
    .await;
    let outside = outside_dir();
    let go = outside.path().join("go");
    let started = outside.path().join("started");
    let input = pseudo_random(BLOB, 1200);
    let prepared = sh(format!(
        "touch '{}'; {}; sha256sum input.bin",
        started.display(),
        wait_for_file(&go)
    ))
    .file("input.bin", &input)
    .build();
    prepared.upload(&server).await;
    let stream = start(&server, prepared.request()).await.unwrap();
    eventually("the action started", || started.exists()).await;
    for i in 0..48u64 {
        upload_blobs(&server, &[&pseudo_random(BLOB, 1300 + i)]).await;
    }
    assert!(server.ctx.cas.stats().snapshot().evictions > 0);
    assert!(
        indexed(&server, &input),
        "the input of a running action was evicted"
    );
    std::fs::write(&go, b"").unwrap();
    let updates = collect(stream).await;
    let result = response(updates.last().unwrap()).result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(
        read_text(&server, &result.stdout_digest).await,
        format!("{}  input.bin\n", digest(&input).hash)
    );
    // The action is over: its input goes like any other blob.
    let mut i = 0;
    while indexed(&server, &input) {
        assert!(i < 64, "the input stayed after its action ended");
        upload_blobs(&server, &[&pseudo_random(BLOB, 1400 + i)]).await;
        i += 1;
    }
}
