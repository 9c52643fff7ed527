//! A full disk: writes fail with RESOURCE_EXHAUSTED, eviction frees room, and nothing
//! half-written is ever served.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::storage::*;
use common::{digest, expect_rpc_status, pseudo_random, upload_blobs};
use rexd::proto::remote_execution as re;
use tonic::Code;

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
