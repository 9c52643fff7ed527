//! The load of the kill tests: clients that upload blobs (ByteStream and batches) and write
//! action results as fast as a server takes them, recording what it acknowledged, until the
//! test kills the server with SIGKILL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::bytestream::{ReadRequest, WriteRequest};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

use super::child::{PATIENCE, Rexd};
use super::pseudo_random;

pub async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

// ---------------------------------------------------------------- the load

/// A blob the server acknowledged, by the seed and size that regenerate it.
#[derive(Clone, Copy, Debug)]
pub struct Blob {
    pub seed: u64,
    pub size: usize,
}

impl Blob {
    pub fn data(&self) -> Vec<u8> {
        pseudo_random(self.size, self.seed)
    }
}

/// An action-cache entry the server acknowledged.
#[derive(Clone, Debug)]
pub struct AcEntry {
    pub action: re::Digest,
    pub output: Blob,
    pub exit_code: i32,
}

/// What the clients saw: acknowledged writes, and failures while the server was alive.
#[derive(Default)]
pub struct Record {
    pub blobs: Mutex<Vec<Blob>>,
    pub ac: Mutex<Vec<AcEntry>>,
    pub stream_acks: AtomicUsize,
    pub batch_acks: AtomicUsize,
    /// Requests sent and not yet answered.
    pub in_flight: AtomicUsize,
    pub killed: AtomicBool,
    /// Failures before the kill: a bug, reported at the end.
    pub early_failures: Mutex<Vec<String>>,
}

impl Record {
    /// Notes a failed request; returns whether the client should stop (the server is gone).
    fn failed(&self, what: String) -> bool {
        if !self.killed.load(Ordering::SeqCst) {
            self.early_failures.lock().unwrap().push(what);
        }
        true
    }
}

fn write_requests(data: &[u8]) -> Vec<WriteRequest> {
    let d = sha(data);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size()
    );
    let chunk = 64 * 1024;
    let mut requests: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * chunk) as i64,
            finish_write: false,
            data: Bytes::copy_from_slice(piece),
        })
        .collect();
    requests.last_mut().unwrap().finish_write = true;
    requests
}

fn batch_request(blobs: &[Blob]) -> re::BatchUpdateBlobsRequest {
    re::BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|b| {
                let data = b.data();
                re::batch_update_blobs_request::Request {
                    digest: Some(sha(&data).to_proto()),
                    data: Bytes::from(data),
                    compressor: 0,
                }
            })
            .collect(),
        ..Default::default()
    }
}

/// Uploads blobs of 64 KiB to 1.2 MiB with ByteStream until the server goes away.
async fn stream_uploader(url: String, record: Arc<Record>, seed_base: u64) {
    let mut client = ByteStreamClient::new(connect(&url).await);
    for i in 0.. {
        let blob = Blob {
            seed: seed_base + i,
            size: 64 * 1024 + ((i * 7919) % 18) as usize * 64 * 1024 + (i % 1000) as usize,
        };
        let requests = write_requests(&blob.data());
        record.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = client.write(futures::stream::iter(requests)).await;
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(r) if r.get_ref().committed_size == blob.size as i64 => {
                record.blobs.lock().unwrap().push(blob);
                record.stream_acks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(r) => {
                record.failed(format!("Write of {blob:?} committed {:?}", r.get_ref()));
                return;
            }
            Err(status) => {
                if record.failed(format!("Write of {blob:?}: {status:?}")) {
                    return;
                }
            }
        }
    }
}

/// Uploads batches of eight blobs of up to 16 KiB until the server goes away.
async fn batch_uploader(url: String, record: Arc<Record>, seed_base: u64) {
    let mut client = ContentAddressableStorageClient::new(connect(&url).await);
    for i in 0.. {
        let blobs: Vec<Blob> = (0..8)
            .map(|j| Blob {
                seed: seed_base + i * 8 + j,
                size: 1 + ((i * 8 + j) * 2477 % (16 * 1024)) as usize,
            })
            .collect();
        record.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = client.batch_update_blobs(batch_request(&blobs)).await;
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(response) => {
                let response = response.into_inner();
                for (blob, r) in blobs.iter().zip(&response.responses) {
                    let code = r.status.as_ref().map_or(0, |s| s.code);
                    if code == 0 {
                        record.blobs.lock().unwrap().push(*blob);
                    } else {
                        record.failed(format!("batch upload of {blob:?}: {:?}", r.status));
                        return;
                    }
                }
                record.batch_acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) => {
                if record.failed(format!("BatchUpdateBlobs: {status:?}")) {
                    return;
                }
            }
        }
    }
}

/// Uploads an output blob, then an action result naming it, until the server goes away.
async fn ac_updater(url: String, record: Arc<Record>, seed_base: u64) {
    let channel = connect(&url).await;
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel);
    for i in 0.. {
        let output = Blob {
            seed: seed_base + i,
            size: 100 + (i as usize * 131) % 4000,
        };
        record.in_flight.fetch_add(1, Ordering::SeqCst);
        let uploaded = cas.batch_update_blobs(batch_request(&[output])).await;
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
        match uploaded {
            Ok(r)
                if r.get_ref().responses[0]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == 0) =>
            {
                record.blobs.lock().unwrap().push(output);
            }
            other => {
                record.failed(format!("uploading an output: {other:?}"));
                return;
            }
        }
        let entry = AcEntry {
            action: sha(format!("crash-test action {seed_base} {i}").as_bytes()).to_proto(),
            output,
            exit_code: (i % 3) as i32,
        };
        let request = re::UpdateActionResultRequest {
            action_digest: Some(entry.action.clone()),
            action_result: Some(re::ActionResult {
                output_files: vec![re::OutputFile {
                    path: format!("out/{i}"),
                    digest: Some(sha(&output.data()).to_proto()),
                    ..Default::default()
                }],
                exit_code: entry.exit_code,
                ..Default::default()
            }),
            ..Default::default()
        };
        record.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = ac.update_action_result(request).await;
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
        match result {
            Ok(_) => record.ac.lock().unwrap().push(entry),
            Err(status) => {
                if record.failed(format!("UpdateActionResult: {status:?}")) {
                    return;
                }
            }
        }
    }
}

/// Runs the load against `rexd` until enough was acknowledged, then SIGKILLs it while
/// requests are in flight; returns what was acknowledged.
pub async fn load_then_kill(rexd: Rexd, round: u64) -> (Vec<Blob>, Vec<AcEntry>) {
    load_change_kill(rexd, round, || {}).await
}

/// As [`load_then_kill`], but runs `midway` once enough was acknowledged and waits for as
/// much again under the changed conditions before the kill.
pub async fn load_change_kill(
    rexd: Rexd,
    round: u64,
    midway: impl FnOnce(),
) -> (Vec<Blob>, Vec<AcEntry>) {
    let mut midway = Some(midway);
    let mut wanted = 30;
    let record = Arc::new(Record::default());
    let url = rexd.url();
    let base = round * 100_000_000;
    let tasks = vec![
        tokio::spawn(stream_uploader(
            url.clone(),
            record.clone(),
            base + 1_000_000,
        )),
        tokio::spawn(stream_uploader(
            url.clone(),
            record.clone(),
            base + 2_000_000,
        )),
        tokio::spawn(batch_uploader(
            url.clone(),
            record.clone(),
            base + 3_000_000,
        )),
        tokio::spawn(batch_uploader(
            url.clone(),
            record.clone(),
            base + 4_000_000,
        )),
        tokio::spawn(ac_updater(url.clone(), record.clone(), base + 5_000_000)),
        tokio::spawn(ac_updater(url.clone(), record.clone(), base + 6_000_000)),
    ];
    let started = Instant::now();
    loop {
        let enough = record.stream_acks.load(Ordering::SeqCst) >= wanted
            && record.batch_acks.load(Ordering::SeqCst) >= wanted
            && record.ac.lock().unwrap().len() >= wanted;
        let failures = record.early_failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "requests failed before the kill: {failures:#?}"
        );
        if enough {
            match midway.take() {
                Some(change) => {
                    change();
                    wanted *= 2;
                }
                None => break,
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "too few acknowledgements within {PATIENCE:?}:\n{}",
            rexd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    record.killed.store(true, Ordering::SeqCst);
    let in_flight = record.in_flight.load(Ordering::SeqCst);
    rexd.kill();
    eprintln!("round {round}: SIGKILL with {in_flight} requests in flight");
    for task in tasks {
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("a client did not notice the server died")
            .unwrap();
    }
    let failures = record.early_failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "requests failed before the kill: {failures:#?}"
    );
    let blobs = record.blobs.lock().unwrap().clone();
    let ac = record.ac.lock().unwrap().clone();
    eprintln!(
        "round {round}: {} blobs and {} action results acknowledged",
        blobs.len(),
        ac.len()
    );
    (blobs, ac)
}

/// The digests among `blobs` that FindMissingBlobs reports missing.
pub async fn missing(url: &str, blobs: &[Blob]) -> Vec<re::Digest> {
    let mut cas = ContentAddressableStorageClient::new(connect(url).await);
    let mut out = Vec::new();
    for chunk in blobs.chunks(1000) {
        out.extend(
            cas.find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: chunk.iter().map(|b| sha(&b.data()).to_proto()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests,
        );
    }
    out
}

/// Reads a blob with ByteStream; `None` if the read fails.
pub async fn read_blob(bs: &mut ByteStreamClient<Channel>, d: &Digest) -> Option<Vec<u8>> {
    let mut stream = bs
        .read(ReadRequest {
            resource_name: format!(
                "blobs/{}/{}/{}",
                d.function().name(),
                d.hash_hex(),
                d.size()
            ),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    let mut data = Vec::new();
    while let Some(msg) = stream.message().await.ok()? {
        data.extend_from_slice(&msg.data);
    }
    Some(data)
}
