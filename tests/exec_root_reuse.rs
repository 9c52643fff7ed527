//! A slot keeps its exec root's directories from one action to the next (clean-up removes
//! only files, staging reuses and prunes directories). These tests hold that to its promise:
//! the next action sees exactly its own input tree, byte for byte what it would see on a
//! fresh server, whatever the action before it made, changed or left.

mod common;

use common::exec::{read_text, run_ok, sh, start_plain};

/// Lists the whole exec root (type, mode, path) and prints one file the tree has where the
/// earlier action had a directory.
fn looker() -> common::exec::ActionBuilder {
    sh("find . -printf '%y %m %p\\n' | LC_ALL=C sort; cat a/d")
        .file("a/b/g", b"g\n")
        .file("a/d", b"a file where a directory was\n")
        .file("made", b"m\n")
}

/// A bigger tree that changes modes and leaves directories, files and a symlink of its own.
fn messy() -> common::exec::ActionBuilder {
    sh(
        "mkdir -p made_dir/deep out && echo x > made_dir/deep/f && ln -s /etc made_dir/link \
        && echo y > a/b/c/new && chmod 700 a && chmod 750 a/b/c && find . | LC_ALL=C sort",
    )
    .file("a/b/c/f1", b"1\n")
    .file("a/d/f2", b"2\n")
    .file("e/f3", b"3\n")
}

async fn listing(server: &common::TestServer, action: &common::exec::ActionBuilder) -> String {
    let result = run_ok(server, action).await;
    read_text(server, &result.stdout_digest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_action_sees_only_its_own_tree() {
    let fresh = start_plain(|c| c.execution.local_workers = Some(1)).await;
    let expected = listing(&fresh, &looker()).await;
    assert!(expected.contains(" ./a/b/g\n"), "{expected}");
    assert!(
        expected.ends_with("a file where a directory was\n"),
        "{expected}"
    );

    let reused = start_plain(|c| c.execution.local_workers = Some(1)).await;
    let before = listing(&reused, &messy()).await;
    for made in [
        "./made_dir/deep/f",
        "./made_dir/link",
        "./a/b/c/new",
        "./e/f3",
    ] {
        assert!(
            before.contains(made),
            "the first action made {made}: {before}"
        );
    }
    // One worker, so the same slot: its exec root kept a, a/b, a/b/c, a/d, e, made_dir and
    // out, with changed modes.
    let after = listing(&reused, &looker()).await;
    assert_eq!(
        after, expected,
        "the second action's exec root differs from a fresh one"
    );

    // Twice more, with the same tree back to back at the end: nothing accumulates.
    listing(&reused, &messy().file("nonce", b"2")).await;
    let again = looker().file("nonce", b"3");
    let expected = listing(&fresh, &again).await;
    assert_eq!(listing(&reused, &again.clone().file("n", b"4")).await, {
        listing(&fresh, &again.file("n", b"4")).await
    });
    assert!(expected.contains(" ./nonce\n"), "{expected}");
}
