//! rexd as a child process in write-back mode, killed with SIGKILL in the middle of
//! concurrent uploads and action-cache updates, with the object store (a real Garage)
//! stopped halfway, so the later acknowledgements rest on the write-back queue alone.
//! After the store and rexd restart, every acknowledged blob and action result reaches the
//! bucket.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::child::{PATIENCE, Rexd, rexd_binary};
use common::garage::{BUCKET, Garage};
use common::kill_load::{load_change_kill, sha};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_write_back_mode_loses_no_acknowledged_upload() {
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("rexd.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"info\"\n\
             [storage]\nfsync = true\n\
             [storage.remote]\nendpoint = \"{}\"\nbucket = \"{BUCKET}\"\nprefix = \"kill\"\n\
             region = \"garage\"\ncredentials_file = \"{}\"\nwrite_policy = \"back\"\n\
             request_timeout_secs = 5\nconnect_timeout_secs = 1\nmax_retries = 1\n\
             [execution]\nenabled = false\n",
            garage.endpoint(),
            garage.credentials_path().display()
        ),
    )
    .unwrap();
    let log = work.path().join("rexd.log");
    let data = tempfile::tempdir().unwrap();
    let bin = rexd_binary();

    let (rexd, _) = Rexd::start(&bin, &config, data.path(), &log).await;
    let (blobs, ac) = load_change_kill(rexd, 0, || garage.stop()).await;
    garage.restart();
    let (_rexd, _) = Rexd::start(&bin, &config, data.path(), &log).await;

    let mut wanted: HashSet<String> = blobs
        .iter()
        .map(|b| {
            let d = sha(&b.data());
            format!("kill/cas/sha256/{}-{}", d.hash_hex(), d.size())
        })
        .collect();
    for entry in &ac {
        let d = &entry.action;
        wanted.insert(format!("kill/ac/_/sha256/{}-{}", d.hash, d.size_bytes));
    }
    let bucket = garage.client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stored: HashSet<String> = bucket
            .list(Some(&Path::from("kill")))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let absent: Vec<&String> = wanted.difference(&stored).collect();
        if absent.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged objects never reached the bucket, e.g. {:?}:\n{}",
            absent.len(),
            wanted.len(),
            absent.first(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{} blobs and {} action results acknowledged, all in the bucket",
        blobs.len(),
        ac.len()
    );
}
