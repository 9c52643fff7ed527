//! rexd as a child process killed with SIGKILL in the middle of concurrent uploads and
//! action-cache updates: after a restart on the same data directory, everything that was
//! acknowledged is there and sound, and no temp file survives. Also (ignored, run by hand)
//! the start-up time and memory of a store of 200,000 blobs.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::TestServer;
use common::child::{Rexd, rexd_binary};
use common::kill_load::{connect, load_then_kill, missing, read_blob, sha};
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;

const CONFIG: &str = r#"
log_level = "info"

[storage]
fsync = true

[execution]
enabled = false
"#;

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
