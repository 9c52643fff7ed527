//! What rexd's log looks like where logs usually go (a file, journald): plain text, no
//! colour escapes, and the addresses a person needs on the first lines.

mod common;

use common::child::{Rexd, free_port, rexd_binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_gets_no_colour_and_names_both_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let ui_port = free_port();
    let config = dir.path().join("rexd.toml");
    std::fs::write(
        &config,
        format!("[metrics]\nlisten = \"127.0.0.1:{ui_port}\"\n[sandbox]\nbackend = \"plain\"\n"),
    )
    .unwrap();
    let log = dir.path().join("rexd.log");
    let (rexd, _) = Rexd::start(&rexd_binary(), &config, &dir.path().join("data"), &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains('\x1b'),
        "colour escapes in a log file:\n{text}"
    );
    assert!(
        text.contains(&format!("ui=http://127.0.0.1:{ui_port}/")),
        "{text}"
    );
    assert!(
        text.contains("rexd serving") && text.contains("local_addr=127.0.0.1:"),
        "{text}"
    );
    drop(rexd);
}
