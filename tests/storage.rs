//! The storage layer under pressure, through the wire with the server in-process: the disk
//! budget and LRU eviction, pins, action-cache entries whose outputs went, restarts (temp
//! files, saved use order), damaged blobs (verify-on-first-read and `rexd verify`), a full
//! disk, the hardlink limit, and actions that try to write through their read-only inputs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use bytesize::ByteSize;
use common::exec::{
    collect, eventually, outside_dir, read_text, response, run, sh, start, start_plain,
    status_code, wait_for_file,
};
use common::{TestServer, digest, expect_rpc_status, pseudo_random, upload_blobs, upload_path};
use rexd::config::{Config, SandboxBackend};
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::{ReadRequest, WriteRequest, WriteResponse};
use rexd::proto::remote_execution as re;
use tonic::{Code, Status};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// Worker uids of the tests that run actions, one range each (two workers apiece). After each
// plain-mode action rexd SIGKILLs every process of the worker's uid, so servers sharing a
// uid range (here, or in another test binary on the default 61000) kill each other's actions.
const UID_BASE_HARDLINK: u32 = 64_010;
const UID_BASE_READ_ONLY_AUTO: u32 = 64_030;
const UID_BASE_READ_ONLY_PLAIN: u32 = 64_050;
const UID_BASE_RUNNING_ACTION: u32 = 64_070;

// ---------------------------------------------------------------- helpers

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

/// Whether the index holds `data`, without counting the question as a use (FindMissingBlobs
/// and reads would move the blob in the LRU order and pin it).
fn indexed(server: &TestServer, data: &[u8]) -> bool {
    server.ctx.cas.index().is_verified(&sha(data)).is_some()
}

/// Every regular file under `dir`, with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out
}

/// Sum of the sizes of the blob files under `{data_dir}/cas`.
fn cas_disk_bytes(data_dir: &Path) -> u64 {
    files_under(&data_dir.join("cas")).iter().map(|f| f.1).sum()
}

/// Names of whatever is in `{data_dir}/tmp`.
fn tmp_entries(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that every file under `{data_dir}/cas` is a complete blob: its content hashes to
/// the digest its name gives.
fn assert_cas_files_are_complete_blobs(data_dir: &Path) {
    for (path, _) in files_under(&data_dir.join("cas")) {
        let function_name = path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .unwrap()
            .to_str()
            .unwrap();
        let function = DigestFunction::from_name(function_name).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (hash, size) = name
            .split_once('-')
            .expect("blob file names are {hash}-{size}");
        let expected = Digest::parse(function, hash, size.parse().unwrap()).unwrap();
        let actual = rexd::storage::disk::hash_file(&path, function).unwrap();
        assert_eq!(
            actual,
            expected,
            "{} is not the blob it is named after",
            path.display()
        );
    }
}

/// Uploads `data` with one ByteStream Write in 32 KiB messages.
async fn bs_write(server: &TestServer, data: &[u8]) -> Result<WriteResponse, Status> {
    let name = upload_path(data);
    let mut requests: Vec<WriteRequest> = data
        .chunks(32 * KIB)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * 32 * KIB) as i64,
            finish_write: false,
            data: Bytes::copy_from_slice(piece),
        })
        .collect();
    if requests.is_empty() {
        requests.push(WriteRequest {
            resource_name: name,
            ..Default::default()
        });
    }
    requests.last_mut().unwrap().finish_write = true;
    server
        .bytestream()
        .await
        .write(futures::stream::iter(requests))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads a blob with ByteStream: the bytes that arrived, and how the read ended.
async fn bs_read(server: &TestServer, d: &re::Digest) -> (Vec<u8>, Result<(), Status>) {
    let mut data = Vec::new();
    let request = ReadRequest {
        resource_name: format!("blobs/{}/{}", d.hash, d.size_bytes),
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = match server.bytestream().await.read(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (data, Err(status)),
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => data.extend_from_slice(&msg.data),
            Ok(None) => return (data, Ok(())),
            Err(status) => return (data, Err(status)),
        }
    }
}

/// Reads one blob with BatchReadBlobs: its per-item code and data.
async fn batch_read(server: &TestServer, d: &re::Digest) -> (Code, Vec<u8>) {
    let response = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &response.responses[0];
    let code = Code::from(r.status.as_ref().map_or(0, |s| s.code));
    (code, r.data.to_vec())
}

/// Asserts that BatchReadBlobs serves exactly `data`.
async fn assert_readable(server: &TestServer, data: &[u8]) {
    let (code, got) = batch_read(server, &digest(data)).await;
    assert_eq!(code, Code::Ok, "reading {:?}", digest(data));
    assert!(
        got == data,
        "BatchReadBlobs served wrong bytes for {:?}",
        digest(data)
    );
}

/// The digests among `blobs` FindMissingBlobs reports missing.
async fn find_missing(server: &TestServer, blobs: &[&[u8]]) -> Vec<re::Digest> {
    server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: blobs.iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

/// A storage-only server: execution off, no minimum retention, and `edit` on top.
async fn start_store(edit: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.execution.enabled = false;
        c.storage.min_retention_secs = 0;
        edit(c);
    })
    .await
}

async fn restart_store(dir: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_in(dir, |c| {
        c.execution.enabled = false;
        c.storage.min_retention_secs = 0;
        edit(c);
    })
    .await
}

/// A budget where every 1000-byte write past `slots` blobs evicts exactly one blob.
fn exact_budget(c: &mut Config, slots: u64) {
    c.storage.max_size = ByteSize::b(slots * 1000 + 500);
    c.storage.low_water_percent = 100;
}

/// `count` distinct 1000-byte blobs.
fn thousand_byte_blobs(count: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| pseudo_random(1000, seed + i as u64))
        .collect()
}

// ---------------------------------------------------------------- budget and LRU

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
        c.sandbox.run_as_uid_base = UID_BASE_RUNNING_ACTION;
        c.execution.workers = 2;
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

// ---------------------------------------------------------------- restarts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_blobs_and_lru_order_and_drops_temp_files() {
    let blobs = thousand_byte_blobs(5, 400);
    let big = pseudo_random(3 * MIB + 17, 401);

    // Run 1: store everything.
    let server = start_store(|_| {}).await;
    for (i, blob) in blobs.iter().enumerate() {
        if i % 2 == 0 {
            upload_blobs(&server, &[blob]).await;
        } else {
            bs_write(&server, blob).await.unwrap();
        }
    }
    bs_write(&server, &big).await.unwrap();
    let dir = server.stop().await;
    assert!(
        dir.path().join("index.lru").exists(),
        "the use order is saved at shutdown"
    );

    // Leftovers of a crash: an upload in progress, an executable copy in progress, a temp
    // directory and an atomic-write temp file.
    let tmp = dir.path().join("tmp");
    std::fs::write(tmp.join("upload-crashed"), b"half a blob").unwrap();
    std::fs::write(tmp.join("exec-crashed"), b"half a copy").unwrap();
    std::fs::write(tmp.join(".tmpAbC123"), b"half an entry").unwrap();
    std::fs::create_dir_all(tmp.join("leftover-dir/sub")).unwrap();
    std::fs::write(tmp.join("leftover-dir/sub/file"), b"x").unwrap();

    // Run 2: every blob is back, the leftovers are gone. Reading the blobs in a new order
    // (3, 0, 4, 1, 2) makes that the use order saved at this shutdown.
    let server = restart_store(dir, |_| {}).await;
    assert!(
        tmp_entries(server.data_dir.path()).is_empty(),
        "{:?}",
        tmp_entries(server.data_dir.path())
    );
    let (data, end) = bs_read(&server, &digest(&big)).await;
    end.unwrap();
    assert!(data == big, "the big blob came back wrong");
    for i in [3, 0, 4, 1, 2] {
        assert_readable(&server, &blobs[i]).await;
    }
    let dir = server.stop().await;

    // Run 3, with a budget for five 1000-byte blobs: the saved order decides what goes.
    // Start-up itself evicts the big blob, which was used before all the others.
    let server = restart_store(dir, |c| exact_budget(c, 5)).await;
    assert!(
        !indexed(&server, &big),
        "start-up brings the store within its budget"
    );
    assert!(blobs.iter().all(|b| indexed(&server, b)));
    let new = thousand_byte_blobs(3, 500);
    for (n, victim) in [3, 0, 4].into_iter().enumerate() {
        upload_blobs(&server, &[&new[n]]).await;
        assert!(
            !indexed(&server, &blobs[victim]),
            "blob {victim} was the least recently used before the restart"
        );
        let present = blobs.iter().filter(|b| indexed(&server, b)).count();
        assert_eq!(present, 5 - n - 1, "exactly one blob goes per write");
    }
    assert_readable(&server, &blobs[1]).await;
    assert_readable(&server, &blobs[2]).await;
    let dir = server.stop().await;

    // Run 4, with a budget of two: start-up eviction follows the saved order as well. At the
    // last shutdown the three new blobs were older than blobs 1 and 2, read after them.
    let server = restart_store(dir, |c| exact_budget(c, 2)).await;
    assert!(
        new.iter().all(|b| !indexed(&server, b)),
        "the new blobs were used least recently"
    );
    assert!(indexed(&server, &blobs[1]) && indexed(&server, &blobs[2]));
    assert_readable(&server, &blobs[1]).await;
    assert_readable(&server, &blobs[2]).await;
}

// ---------------------------------------------------------------- damaged blobs

fn overwrite(path: &Path, data: &[u8]) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).unwrap();
}

fn rexd_verify(dir: &Path, extra: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rexd"))
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().expect("rexd verify exited normally");
    (code, format!("{stdout}\n--- stderr ---\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_blob_is_never_served() {
    let x = pseudo_random(2 * MIB + 333, 600); // read with ByteStream: several chunks
    let y = pseudo_random(10_000, 601); // read with BatchReadBlobs
    let z = pseudo_random(5_000, 602); // left for `rexd verify`
    let good = pseudo_random(3_000, 603);
    let server = start_store(|_| {}).await;
    bs_write(&server, &x).await.unwrap();
    upload_blobs(&server, &[&y, &z, &good]).await;
    let dir = server.stop().await;

    let (code, report) = rexd_verify(dir.path(), &[]);
    assert_eq!(code, 0, "a clean store verifies: {report}");
    assert!(report.contains("0 damaged"), "{report}");

    // Same size with one byte flipped deep inside; other bytes of the same size; truncated.
    let mut bad_x = x.clone();
    bad_x[MIB + 5] ^= 0x40;
    overwrite(&common::blob_file(dir.path(), &x), &bad_x);
    overwrite(
        &common::blob_file(dir.path(), &y),
        &pseudo_random(10_000, 9),
    );
    overwrite(&common::blob_file(dir.path(), &z), &z[..4_000]);

    let (code, report) = rexd_verify(dir.path(), &["--dry-run"]);
    assert_eq!(code, 2, "a damaged store fails verification: {report}");
    for blob in [&x, &y, &z] {
        assert!(report.contains(&digest(blob).hash), "{report}");
    }
    assert!(!report.contains(&digest(&good).hash), "{report}");
    assert!(
        common::blob_file(dir.path(), &x).exists(),
        "a dry run removes nothing"
    );

    let server = restart_store(dir, |_| {}).await;
    let (data, end) = bs_read(&server, &digest(&x)).await;
    assert!(
        x.starts_with(&data),
        "ByteStream served {} bytes that are not the blob's",
        data.len()
    );
    let status = end.expect_err("a damaged blob must not be served");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let (code, data) = batch_read(&server, &digest(&y)).await;
    assert_eq!(code, Code::NotFound);
    assert!(data.is_empty());
    let missing = find_missing(&server, &[&x, &y, &good]).await;
    assert_eq!(missing, vec![digest(&x), digest(&y)]);
    assert_eq!(server.ctx.cas.stats().snapshot().corrupt, 2);
    assert!(!common::blob_file(server.data_dir.path(), &x).exists());
    assert_readable(&server, &good).await;
    // A client that re-uploads a blob it was told is missing gets it stored again.
    upload_blobs(&server, &[&y]).await;
    assert_readable(&server, &y).await;
    let dir = server.stop().await;

    // The server already removed x and y; `rexd verify` finds and removes z.
    let (code, report) = rexd_verify(dir.path(), &[]);
    assert_eq!(code, 2, "{report}");
    assert!(report.contains(&digest(&z).hash), "{report}");
    assert!(report.contains("1 damaged"), "{report}");
    assert!(!common::blob_file(dir.path(), &z).exists());
    let (code, report) = rexd_verify(dir.path(), &[]);
    assert_eq!(code, 0, "after removal the store is clean: {report}");

    let server = restart_store(dir, |_| {}).await;
    assert_eq!(
        find_missing(&server, &[&z, &good, &y]).await,
        vec![digest(&z)]
    );
    assert_readable(&server, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_of_a_damaged_but_unread_blob_repairs_it() {
    // After a restart, a blob whose file went bad is still indexed until something reads it.
    // A client that uploads it meanwhile must end up with the right bytes stored, not with
    // an upload that "succeeded" and a blob that then reads as missing.
    let blob = pseudo_random(50_000, 700);
    let server = start_store(|_| {}).await;
    upload_blobs(&server, &[&blob]).await;
    let dir = server.stop().await;
    overwrite(
        &common::blob_file(dir.path(), &blob),
        &pseudo_random(50_000, 701),
    );

    let server = restart_store(dir, |_| {}).await;
    upload_blobs(&server, &[&blob]).await;
    assert_readable(&server, &blob).await;
    let dir = server.stop().await;
    overwrite(
        &common::blob_file(dir.path(), &blob),
        &pseudo_random(50_000, 702),
    );

    let server = restart_store(dir, |_| {}).await;
    bs_write(&server, &blob).await.unwrap();
    let (data, end) = bs_read(&server, &digest(&blob)).await;
    end.unwrap();
    assert!(data == blob, "ByteStream served wrong bytes");
}

// ---------------------------------------------------------------- a full disk

/// A tmpfs mounted for the duration of a test; unmounted (lazily if busy) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (after a loud message) where mounting is
    /// not possible outside CI.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match output {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = format!("cannot mount a tmpfs at {}: {other:?}", dir.display());
                if std::env::var_os("CI").is_some() {
                    panic!("{why}");
                }
                eprintln!("\n*** SKIPPED: {why} ***\n");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_resource_exhausted_and_the_server_carries_on() {
    let outer = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(outer.path(), "2m") else {
        return;
    };
    let data_dir = tempfile::tempdir_in(outer.path()).unwrap();
    let server = restart_store(data_dir, |_| {}).await;
    let dir = server.data_dir.path().to_path_buf();

    // A blob bigger than the whole disk, by ByteStream and by batch.
    let huge = pseudo_random(3 * MIB, 800);
    let status = bs_write(&server, &huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("No space left on device"),
        "the message should say the disk is full: {:?}",
        status.message()
    );
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest(&huge)),
                data: Bytes::copy_from_slice(&huge),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(
        response.responses[0].status.as_ref(),
        Code::ResourceExhausted,
        &["No space left on device"],
    );

    // Still serving; nothing of the failed uploads is left behind.
    server
        .capabilities()
        .await
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    assert_eq!(find_missing(&server, &[&huge]).await, vec![digest(&huge)]);
    assert!(!common::blob_file(&dir, &huge).exists());
    assert_eq!(cas_disk_bytes(&dir), 0, "no partial blob under cas/");
    assert!(tmp_entries(&dir).is_empty(), "{:?}", tmp_entries(&dir));
    let small = pseudo_random(10 * KIB, 801);
    upload_blobs(&server, &[&small]).await;
    assert_readable(&server, &small).await;

    // Fill the disk with evictable blobs: the write that finds it full fails, frees space by
    // evicting, and the same upload then succeeds.
    let mut failed = None;
    for i in 0..64u64 {
        let blob = pseudo_random(64 * KIB, 900 + i);
        let response = server
            .cas()
            .await
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                requests: vec![re::batch_update_blobs_request::Request {
                    digest: Some(digest(&blob)),
                    data: Bytes::copy_from_slice(&blob),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let code = Code::from(response.responses[0].status.as_ref().unwrap().code);
        if code != Code::Ok {
            assert_eq!(
                code,
                Code::ResourceExhausted,
                "{:?}",
                response.responses[0].status
            );
            failed = Some(blob);
            break;
        }
    }
    let blob = failed.expect("a 2 MiB disk never filled up");
    assert!(
        server.ctx.cas.stats().snapshot().evictions > 0,
        "a full disk evicts"
    );
    bs_write(&server, &blob)
        .await
        .expect("the retry after eviction");
    assert_readable(&server, &blob).await;
    assert_cas_files_are_complete_blobs(&dir);
    assert!(tmp_entries(&dir).is_empty(), "{:?}", tmp_entries(&dir));
    assert_eq!(cas_disk_bytes(&dir), server.ctx.cas.index().total_bytes());
    drop(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_of_pinned_blobs_fails_uploads_and_still_shuts_down_cleanly() {
    let outer = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(outer.path(), "2m") else {
        return;
    };
    let data_dir = tempfile::tempdir_in(outer.path()).unwrap();
    let server = restart_store(data_dir, |c| c.storage.min_retention_secs = 3600).await;
    let dir = server.data_dir.path().to_path_buf();
    // Every blob is pinned as soon as it is stored, so a full disk has nothing to evict.
    let mut stored = Vec::new();
    let mut full = false;
    for i in 0..64u64 {
        let blob = pseudo_random(64 * KIB, 1100 + i);
        let response = server
            .cas()
            .await
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                requests: vec![re::batch_update_blobs_request::Request {
                    digest: Some(digest(&blob)),
                    data: Bytes::copy_from_slice(&blob),
                    compressor: 0,
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let status = response.responses[0].status.clone();
        if status.as_ref().unwrap().code != 0 {
            expect_rpc_status(status.as_ref(), Code::ResourceExhausted, &["No space left"]);
            full = true;
            break;
        }
        assert!(find_missing(&server, &[&blob]).await.is_empty());
        stored.push(blob);
    }
    assert!(full, "a 2 MiB disk never filled up");
    // Top it up to the last byte: smaller and smaller blobs until even 1 KiB fails.
    let mut size = 32 * KIB;
    let mut seed = 5000;
    while size >= KIB {
        let blob = pseudo_random(size, seed);
        seed += 1;
        match bs_write(&server, &blob).await {
            Ok(_) => {
                assert!(find_missing(&server, &[&blob]).await.is_empty());
                stored.push(blob);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                size /= 2;
            }
        }
    }
    assert_eq!(
        server.ctx.cas.stats().snapshot().evictions,
        0,
        "everything is pinned"
    );
    server
        .capabilities()
        .await
        .get_capabilities(re::GetCapabilitiesRequest::default())
        .await
        .unwrap();
    for blob in &stored {
        assert_readable(&server, blob).await;
    }
    assert_cas_files_are_complete_blobs(&dir);
    assert!(tmp_entries(&dir).is_empty(), "{:?}", tmp_entries(&dir));
    // Shutting down must not fail because the disk is full: all that is lost is the saved
    // use order.
    let dir = server.stop().await;
    let server = restart_store(dir, |_| {}).await;
    for blob in &stored {
        assert_readable(&server, blob).await;
    }
    drop(server.stop().await);
}

// ---------------------------------------------------------------- staging

/// Removes a directory of scratch hardlinks on drop.
struct ScratchLinks(PathBuf);

impl Drop for ScratchLinks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_at_the_hardlink_limit_is_copied() {
    let server = TestServer::start_with(|c| {
        c.sandbox.run_as_uid_base = UID_BASE_HARDLINK;
        c.execution.workers = 2;
    })
    .await;
    let content = b"an input whose inode has no links left\n".to_vec();
    upload_blobs(&server, &[&content]).await;
    let blob = server.ctx.cas.blob_path(&sha(&content));
    let scratch = ScratchLinks(server.data_dir.path().join("scratch-links"));
    std::fs::create_dir(&scratch.0).unwrap();
    let mut links = 0u32;
    let refused = loop {
        if links >= 70_000 {
            break None;
        }
        match std::fs::hard_link(&blob, scratch.0.join(links.to_string())) {
            Ok(()) => links += 1,
            Err(e) => break Some(e),
        }
    };
    match refused {
        Some(e) if e.raw_os_error() == Some(nix::libc::EMLINK) => {}
        Some(e) => panic!("linking failed after {links} links with an unexpected error: {e}"),
        None => {
            eprintln!(
                "\n*** SKIPPED: the filesystem of {} accepted {links} links to one file \
                 without EMLINK ***\n",
                scratch.0.display()
            );
            return;
        }
    }
    let nlink = std::fs::metadata(&blob).unwrap().nlink();
    eprintln!("the blob has {nlink} links; link() now fails with EMLINK");

    let action = sh("stat -c %h input.txt; cat input.txt").file("input.txt", &content);
    let response = run(&server, &action).await;
    assert_eq!(status_code(&response), Code::Ok, "{:?}", response.status);
    let result = response.result.unwrap();
    let stdout = read_text(&server, &result.stdout_digest).await;
    let stderr = read_text(&server, &result.stderr_digest).await;
    assert_eq!(result.exit_code, 0, "stdout {stdout:?} stderr {stderr:?}");
    let expected = format!("1\n{}", String::from_utf8_lossy(&content));
    assert_eq!(stdout, expected, "a private copy with the blob's content");
    assert_eq!(
        std::fs::metadata(&blob).unwrap().nlink(),
        nlink,
        "the action's copy is not a link to the blob"
    );
    drop(scratch);
    assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 1);
    assert_readable(&server, &content).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_cannot_change_its_read_only_input() {
    for backend in [SandboxBackend::Auto, SandboxBackend::Plain] {
        let server = TestServer::start_with(|c| {
            c.sandbox.backend = backend;
            c.execution.workers = 2;
            c.sandbox.run_as_uid_base = match backend {
                SandboxBackend::Plain => UID_BASE_READ_ONLY_PLAIN,
                _ => UID_BASE_READ_ONLY_AUTO,
            };
        })
        .await;
        let content = format!("the original input ({backend:?})\n").into_bytes();
        let action = sh(
            "echo x >> input.txt; chmod u+w input.txt; echo y >> input.txt; \
             ls -ln input.txt; cat input.txt; true",
        )
        .file("input.txt", &content);
        let response = run(&server, &action).await;
        let result = response.result.clone().unwrap_or_default();
        let worker = result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.clone())
            .unwrap_or_default();
        let stdout = match &result.stdout_digest {
            Some(_) => read_text(&server, &result.stdout_digest).await,
            None => String::new(),
        };
        let stderr = match &result.stderr_digest {
            Some(_) => read_text(&server, &result.stderr_digest).await,
            None => String::new(),
        };
        eprintln!(
            "{backend:?} on {worker}: status {:?}, exit {}\nstdout: {stdout}stderr: {stderr}",
            response.status, result.exit_code
        );
        let action_succeeded = status_code(&response) == Code::Ok && result.exit_code == 0;

        let path = server.ctx.cas.blob_path(&sha(&content));
        let (code, data) = batch_read(&server, &digest(&content)).await;
        match code {
            Code::Ok => {
                assert!(
                    data == content,
                    "{backend:?}: the CAS serves changed content"
                );
                let meta = std::fs::metadata(&path).unwrap();
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    content,
                    "{backend:?}: blob file changed"
                );
                assert_eq!(
                    meta.mode() & 0o7777,
                    0o444,
                    "{backend:?}: blob mode changed"
                );
                assert_eq!(
                    meta.uid(),
                    nix::unistd::geteuid().as_raw(),
                    "{backend:?}: owner changed"
                );
            }
            Code::NotFound => {
                assert!(
                    !action_succeeded,
                    "{backend:?}: the blob was removed, so the action must have failed"
                );
                assert!(!path.exists());
            }
            other => panic!("{backend:?}: reading the input answered {other:?}"),
        }

        // A later action handed the same input sees the original bytes.
        let check = sh("cat input.txt").file("input.txt", &content);
        let response = run(&server, &check).await;
        let result = response.result.unwrap();
        assert_eq!(result.exit_code, 0);
        assert_eq!(
            read_text(&server, &result.stdout_digest).await.into_bytes(),
            content,
            "{backend:?}"
        );
    }
}
