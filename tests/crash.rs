//! rexd as a child process killed with SIGKILL in the middle of concurrent uploads and
//! action-cache updates: after a restart on the same data directory, everything that was
//! acknowledged is there and sound, and no temp file survives. Also (ignored, run by hand)
//! the start-up time and memory of a store of 200,000 blobs.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, pseudo_random};
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::bytestream::{ReadRequest, WriteRequest};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

/// Longest the tests wait for the server to come up or for enough uploads to be acknowledged.
const PATIENCE: Duration = Duration::from_secs(120);

const CONFIG: &str = r#"
log_level = "info"

[storage]
fsync = true

[execution]
enabled = false
"#;

// ---------------------------------------------------------------- the child server

/// A rexd child process; killed (SIGKILL, by its pid) when dropped.
struct Rexd {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rexd_binary() -> PathBuf {
    std::env::var_os("REXD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rexd")))
}

impl Rexd {
    /// Starts `rexd serve` on a free port and waits until it answers GetCapabilities; also
    /// returns how long that took from the spawn.
    async fn start(bin: &Path, config: &Path, data_dir: &Path, log: &Path) -> (Rexd, Duration) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let spawned = Instant::now();
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut rexd = Rexd {
            child,
            addr,
            log: log.to_path_buf(),
        };
        loop {
            if let Some(status) = rexd.child.try_wait().unwrap() {
                panic!(
                    "rexd exited with {status} before serving:\n{}",
                    rexd.log_text()
                );
            }
            assert!(
                spawned.elapsed() < PATIENCE,
                "rexd did not answer within {PATIENCE:?}:\n{}",
                rexd.log_text()
            );
            if let Ok(mut caps) = CapabilitiesClient::connect(rexd.url()).await
                && caps
                    .get_capabilities(re::GetCapabilitiesRequest::default())
                    .await
                    .is_ok()
            {
                let ready = spawned.elapsed();
                return (rexd, ready);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Rexd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

fn rexd_verify(dir: &Path, extra: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rexd"))
        .arg("verify")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (
        output.status.code().expect("rexd verify exited normally"),
        text,
    )
}

fn tmp_entries(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ---------------------------------------------------------------- the load

/// A blob the server acknowledged, by the seed and size that regenerate it.
#[derive(Clone, Copy, Debug)]
struct Blob {
    seed: u64,
    size: usize,
}

impl Blob {
    fn data(&self) -> Vec<u8> {
        pseudo_random(self.size, self.seed)
    }
}

/// An action-cache entry the server acknowledged.
#[derive(Clone, Debug)]
struct AcEntry {
    action: re::Digest,
    output: Blob,
    exit_code: i32,
}

/// What the clients saw: acknowledged writes, and failures while the server was alive.
#[derive(Default)]
struct Record {
    blobs: Mutex<Vec<Blob>>,
    ac: Mutex<Vec<AcEntry>>,
    stream_acks: AtomicUsize,
    batch_acks: AtomicUsize,
    /// Requests sent and not yet answered.
    in_flight: AtomicUsize,
    killed: AtomicBool,
    /// Failures before the kill: a bug, reported at the end.
    early_failures: Mutex<Vec<String>>,
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
async fn load_then_kill(rexd: Rexd, round: u64) -> (Vec<Blob>, Vec<AcEntry>) {
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
        let enough = record.stream_acks.load(Ordering::SeqCst) >= 30
            && record.batch_acks.load(Ordering::SeqCst) >= 30
            && record.ac.lock().unwrap().len() >= 30;
        let failures = record.early_failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "requests failed before the kill: {failures:#?}"
        );
        if enough {
            break;
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
async fn missing(url: &str, blobs: &[Blob]) -> Vec<re::Digest> {
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
async fn read_blob(bs: &mut ByteStreamClient<Channel>, d: &Digest) -> Option<Vec<u8>> {
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

/// The digests of every blob file under `{data_dir}/cas`, by their names.
fn blobs_on_disk(data_dir: &Path) -> Vec<Digest> {
    let mut out = Vec::new();
    for &function in DigestFunction::ALL {
        let dir = data_dir.join("cas").join(function.name());
        for shard in std::fs::read_dir(&dir).unwrap() {
            for entry in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                let (hash, size) = name.split_once('-').unwrap();
                out.push(Digest::parse(function, hash, size.parse().unwrap()).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_uploads_loses_nothing_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("rexd.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let log = work.path().join("rexd.log");
    let data = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rexd"));

    // Two rounds: load, SIGKILL, restart on the same directory, check, and again.
    let mut blobs = Vec::new();
    let mut ac = Vec::new();
    for round in 0..2 {
        let (rexd, _) = Rexd::start(&bin, &config, data.path(), &log).await;
        assert!(
            tmp_entries(data.path()).is_empty(),
            "after a restart: {:?}",
            tmp_entries(data.path())
        );
        assert_eq!(
            missing(&rexd.url(), &blobs).await,
            vec![],
            "acknowledged blobs are missing after SIGKILL and restart"
        );
        let (more_blobs, more_ac) = load_then_kill(rexd, round).await;
        blobs.extend(more_blobs);
        ac.extend(more_ac);
    }

    // Final check with the server in-process.
    let server = TestServer::start_in(data, |c| c.execution.enabled = false).await;
    let dir = server.data_dir.path().to_path_buf();
    assert!(
        tmp_entries(&dir).is_empty(),
        "after a restart: {:?}",
        tmp_entries(&dir)
    );
    let url = format!("http://{}", server.addr);
    assert_eq!(
        missing(&url, &blobs).await,
        vec![],
        "acknowledged blobs are missing"
    );

    let mut bs = ByteStreamClient::new(connect(&url).await).max_decoding_message_size(64 << 20);
    for blob in &blobs {
        let data = blob.data();
        let got = read_blob(&mut bs, &sha(&data)).await;
        assert!(
            got.as_deref() == Some(&data[..]),
            "acknowledged {blob:?} does not read back"
        );
    }
    let mut ac_client = ActionCacheClient::new(connect(&url).await);
    for entry in &ac {
        let result = ac_client
            .get_action_result(re::GetActionResultRequest {
                action_digest: Some(entry.action.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged {entry:?} is gone: {s:?}"))
            .into_inner();
        assert_eq!(result.exit_code, entry.exit_code);
        assert_eq!(
            result.output_files[0].digest,
            Some(sha(&entry.output.data()).to_proto())
        );
    }

    // Everything the store holds, acknowledged or not, is sound.
    let on_disk = blobs_on_disk(&dir);
    assert!(on_disk.len() >= blobs.len());
    for d in &on_disk {
        let got = read_blob(&mut bs, d)
            .await
            .unwrap_or_else(|| panic!("{d:?} is on disk but is not served"));
        assert_eq!(
            Digest::of(d.function(), &got),
            *d,
            "{d:?} served wrong bytes"
        );
    }
    assert_eq!(server.ctx.cas.stats().snapshot().corrupt, 0);
    eprintln!(
        "{} blobs on disk ({} acknowledged), {} action results acknowledged",
        on_disk.len(),
        blobs.len(),
        ac.len()
    );
    let data = server.stop().await;

    let (code, report) = rexd_verify(data.path(), &["--dry-run"]);
    assert_eq!(code, 0, "rexd verify found damage: {report}");
    assert!(report.contains("0 damaged"), "{report}");
}

// ---------------------------------------------------------------- a large store

fn vm_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .map(|l| l["VmRSS:".len()..].trim().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow; run with --ignored --nocapture (REXD_BIN=target/release/rexd for a release figure)"]
async fn restart_with_200k_blobs() {
    const COUNT: usize = 200_000;
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("rexd.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let log = work.path().join("rexd.log");
    let data = tempfile::tempdir().unwrap();

    let writing = Instant::now();
    let shards = data.path().join("cas").join("sha256");
    for shard in 0..=255u8 {
        std::fs::create_dir_all(shards.join(format!("{shard:02x}"))).unwrap();
    }
    let mut sample = Vec::new();
    for i in 0..COUNT {
        let content = format!("small blob number {i}\n");
        let d = sha(content.as_bytes());
        let hash = d.hash_hex();
        let path = shards.join(&hash[..2]).join(format!("{hash}-{}", d.size()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, content.as_bytes()).unwrap();
        if i % 200 == 0 {
            sample.push(d);
        }
    }
    println!("wrote {COUNT} blobs in {:?}", writing.elapsed());

    let bin = rexd_binary();
    let (rexd, ready) = Rexd::start(&bin, &config, data.path(), &log).await;
    let rss = vm_rss(rexd.pid());
    let opened = rexd
        .log_text()
        .lines()
        .find(|l| l.contains("storage opened"))
        .unwrap_or_default()
        .to_string();
    println!("binary: {}", bin.display());
    println!("spawn to first GetCapabilities: {ready:?}");
    println!("VmRSS at that point: {rss}");
    println!("server log: {opened}");

    let mut cas = ContentAddressableStorageClient::new(connect(&rexd.url()).await);
    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: sample.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert!(
        missing.is_empty(),
        "{} of the sample missing",
        missing.len()
    );
    let mut bs = ByteStreamClient::new(connect(&rexd.url()).await);
    for d in sample.iter().take(50) {
        let got = read_blob(&mut bs, d)
            .await
            .expect("a blob written before start-up reads");
        assert_eq!(sha(&got), *d);
    }
    rexd.kill();
}
