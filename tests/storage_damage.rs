//! Damaged blobs: blobs found on disk are verified on first read, and `rexd verify` finds and
//! removes the damaged ones.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::storage::*;
use common::{digest, pseudo_random, upload_blobs};
use tonic::Code;

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
