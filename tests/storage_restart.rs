//! Restarts of the store: temp files left by a crash are cleared and the saved use order
//! comes back.

mod common;

use common::storage::*;
use common::{digest, pseudo_random, upload_blobs};

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
