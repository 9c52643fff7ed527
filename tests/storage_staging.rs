//! Staging inputs: the hardlink limit falls back to a copy, and an action cannot write through
//! its read-only inputs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::exec::{read_text, run, sh, status_code};
use common::storage::*;
use common::{TestServer, digest, upload_blobs};
use rexd::config::SandboxBackend;
use tonic::Code;

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
        c.execution.local_workers = Some(2);
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
            c.execution.local_workers = Some(2);
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
