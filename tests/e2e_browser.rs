//! The web UI in a real browser: headless Chromium, driven through WebDriver, watching a
//! running action appear and finish on the overview, opening an action's page, following
//! its stdout, expanding its input tree and reading why it missed the cache. Screenshots go
//! to the test's temp dir, or to `REXD_UI_SHOTS` when set.

mod common;

use common::TestServer;
use common::browser::Browser;
use common::exec::{self, ActionBuilder, outside_dir, sh, wait_for_file};
use common::web::{action_path, start_with_ui};
use fantoccini::Locator;
use prost::Message;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_stage::Value as Stage;

/// Starts Execute with RequestMetadata naming the target, mnemonic and invocation.
async fn execute_as(
    server: &TestServer,
    action: &ActionBuilder,
    target: &str,
) -> tonic::Streaming<rexd::proto::longrunning::Operation> {
    let prepared = action.build();
    prepared.upload(server).await;
    let metadata = re::RequestMetadata {
        tool_details: Some(re::ToolDetails {
            tool_name: "bazel".into(),
            tool_version: "test".into(),
        }),
        tool_invocation_id: "inv-browser".into(),
        action_mnemonic: "Genrule".into(),
        target_id: target.into(),
        ..Default::default()
    };
    let mut request = tonic::Request::new(prepared.request());
    request.metadata_mut().insert_bin(
        "build.bazel.remote.execution.v2.requestmetadata-bin",
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    exec::execution_client(server)
        .await
        .execute(request)
        .await
        .unwrap()
        .into_inner()
}

fn generator(mode: &str, input: &[u8]) -> ActionBuilder {
    let mut a = sh("echo building with $MODE; cat src/input.txt > out.txt")
        .file("src/input.txt", input)
        .file("README", b"unchanged");
    a.env.push(("MODE".into(), mode.into()));
    a.output_files = vec!["out.txt".into()];
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_follows_an_action_through_the_ui() {
    let temp = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("REXD_UI_SHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().join("screenshots"));
    let Some(browser) = Browser::start(&shots).await else {
        return;
    };
    let (server, addr) = start_with_ui(|_| {}).await;
    let base = format!("http://{addr}");

    // A running action appears on the overview, then leaves it without a reload.
    let outside = outside_dir();
    let go = outside.path().join("go");
    let mut slow = execute_as(&server, &sh(wait_for_file(&go)), "//app:slow").await;
    exec::wait_for_stage(&mut slow, Stage::Executing).await;
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.wait_for_text("#running", "//app:slow").await;
    browser.screenshot("overview-running").await;
    std::fs::write(&go, "").unwrap();
    exec::wait_for_stage(&mut slow, Stage::Completed).await;
    browser.wait_for_text("#live", "Nothing is running.").await;

    // Two runs of one target whose environment and one input changed.
    let (before, after) = (generator("fast", b"one"), generator("slow", b"two"));
    for action in [&before, &after] {
        let mut stream = execute_as(&server, action, "//app:gen").await;
        let op = exec::wait_for_stage(&mut stream, Stage::Completed).await;
        assert_eq!(exec::response(&op).result.unwrap().exit_code, 0);
    }

    // From the actions page to the second run's page.
    browser
        .client
        .goto(&format!("{base}/actions"))
        .await
        .unwrap();
    let href = action_path(&after.build().digest);
    browser
        .client
        .find(Locator::Css(&format!("a[href='{href}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("h1", "Action").await;
    let diff = browser.wait_for_text("#cache-miss-diff", "MODE").await;
    let diff = diff.text().await.unwrap();
    assert!(diff.contains("fast") && diff.contains("slow"), "{diff}");
    assert!(diff.contains("src/input.txt"), "{diff}");
    assert!(
        !diff.contains("README"),
        "an unchanged input is not listed: {diff}"
    );
    browser
        .wait_for_text("#arguments", "building with $MODE")
        .await;
    // Tall enough for the whole page above the input tree.
    browser.client.set_window_size(1280, 1500).await.unwrap();
    browser.screenshot("action").await;

    // The input tree: the subdirectory opens on a click.
    let file = browser
        .client
        .find(Locator::XPath(
            "//div[@id='input-tree']//a[text()='input.txt']",
        ))
        .await
        .unwrap();
    assert!(!file.is_displayed().await.unwrap(), "src/ starts closed");
    browser
        .client
        .find(Locator::XPath(
            "//div[@id='input-tree']//details/details/summary",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert!(file.is_displayed().await.unwrap(), "src/ opened");
    browser.screenshot("input-tree").await;

    // stdout, inline and whole.
    browser.wait_for_text("#stdout", "building with slow").await;
    browser
        .client
        .find(Locator::Id("stdout-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_text("body", "building with slow").await;

    // The invocation's row counts every action it sent.
    browser
        .client
        .goto(&format!("{base}/invocations"))
        .await
        .unwrap();
    let row = browser
        .wait_for_text("#invocations tr", "inv-browser")
        .await;
    assert!(row.text().await.unwrap().contains("bazel test"));
    eprintln!("screenshots in {}", shots.display());
    browser.close().await;
}
