//! The REAPI RequestMetadata header (`build.bazel.remote.execution.v2.requestmetadata-bin`):
//! what a client says about itself on Execute is kept with the operation, tagged onto the log
//! lines of the RPC, and repeated in the "action completed" line of the action.
//!
//! Logs are captured by a global tracing subscriber writing to a buffer (workers log from
//! their own tasks, so a per-thread subscriber would miss them); each test looks only at lines
//! naming its own, unique, invocation id.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::TestServer;
use common::exec::{self, eventually, sh};
use common::start_plain_isolated as start_plain;
use prost::Message;
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_client::ExecutionClient;
use rexd::service::execution::REQUEST_METADATA_HEADER;
use tonic::metadata::MetadataValue;

#[derive(Clone)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged so far by this test binary.
fn logs() -> String {
    static BUFFER: OnceLock<Buffer> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Buffer(Arc::default());
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
        buffer
    });
    String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned()
}

/// Lines of the log that mention `needle`.
fn lines_with(needle: &str) -> Vec<String> {
    logs()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn metadata(mnemonic: &str) -> re::RequestMetadata {
    re::RequestMetadata {
        tool_details: Some(re::ToolDetails {
            tool_name: "rexd-metadata-test".into(),
            tool_version: "9.8.7".into(),
        }),
        action_id: uuid::Uuid::new_v4().to_string(),
        tool_invocation_id: uuid::Uuid::new_v4().to_string(),
        correlated_invocations_id: uuid::Uuid::new_v4().to_string(),
        action_mnemonic: mnemonic.into(),
        target_id: "//pkg/sub:target".into(),
        configuration_id: "k8-fastbuild".into(),
    }
}

/// Execute with the RequestMetadata header; returns the operation name and final response.
async fn execute_with(
    server: &TestServer,
    request: re::ExecuteRequest,
    header: Option<Vec<u8>>,
) -> (String, re::ExecuteResponse) {
    let mut request = tonic::Request::new(request);
    if let Some(bytes) = header {
        request
            .metadata_mut()
            .insert_bin(REQUEST_METADATA_HEADER, MetadataValue::from_bytes(&bytes));
    }
    let stream = ExecutionClient::new(server.channel().await)
        .execute(request)
        .await
        .expect("Execute accepted")
        .into_inner();
    let updates = exec::collect(stream).await;
    let last = updates.last().unwrap();
    (last.name.clone(), exec::response(last))
}

fn stored_metadata(server: &TestServer, operation: &str) -> Option<re::RequestMetadata> {
    server
        .ctx
        .execution
        .as_ref()
        .expect("execution is enabled")
        .operations()
        .get(operation)
        .expect("the operation is still known")
        .request_metadata
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_kept_with_the_operation_and_logged() {
    logs();
    let server = start_plain(|_| {}).await;
    let md = metadata("Genrule");
    let action = sh("echo with metadata").build();
    action.upload(&server).await;
    let (name, response) = execute_with(&server, action.request(), Some(md.encode_to_vec())).await;
    assert_eq!(exec::status_code(&response), tonic::Code::Ok);
    assert!(!response.cached_result);
    assert_eq!(stored_metadata(&server, &name), Some(md.clone()));

    // One "action completed" line, with everything the client said.
    let invocation = md.tool_invocation_id.clone();
    eventually("the \"action completed\" line", || {
        lines_with(&invocation)
            .iter()
            .any(|l| l.contains("action completed"))
    })
    .await;
    let completed: Vec<String> = lines_with(&invocation)
        .into_iter()
        .filter(|l| l.contains("action completed"))
        .collect();
    assert_eq!(completed.len(), 1, "{completed:#?}");
    let line = &completed[0];
    for needle in [
        name.as_str(),
        "rexd-metadata-test",
        "9.8.7",
        md.correlated_invocations_id.as_str(),
        "Genrule",
        "//pkg/sub:target",
        "outcome=\"success\"",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }

    // The RPC's own lines (here "queued") carry the metadata in their span.
    let queued: Vec<String> = lines_with(&invocation)
        .into_iter()
        // The event itself, not the "action completed" line's queued_us field.
        .filter(|l| l.contains(": queued ") && l.contains(&name))
        .collect();
    assert_eq!(queued.len(), 1, "{:#?}", lines_with(&invocation));
    for needle in [
        "/build.bazel.remote.execution.v2.Execution/Execute",
        "rexd-metadata-test",
        "Genrule",
        "//pkg/sub:target",
    ] {
        assert!(
            queued[0].contains(needle),
            "{needle:?} missing from {:?}",
            queued[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_keep_the_metadata_too() {
    logs();
    let server = start_plain(|_| {}).await;
    let action = sh("echo cached with metadata").build();
    action.upload(&server).await;
    let first = metadata("First");
    let (_, response) = execute_with(&server, action.request(), Some(first.encode_to_vec())).await;
    assert!(!response.cached_result);

    let second = metadata("Second");
    let (name, response) =
        execute_with(&server, action.request(), Some(second.encode_to_vec())).await;
    assert!(response.cached_result, "{response:?}");
    // A cache hit retains no operation; its metadata lives on in the log line.
    let engine = server.ctx.execution.as_ref().expect("execution is enabled");
    assert!(engine.operations().get(&name).is_none());
    let served: Vec<String> = lines_with(&second.tool_invocation_id)
        .into_iter()
        .filter(|l| l.contains("served from the action cache"))
        .collect();
    assert_eq!(served.len(), 1, "{served:#?}");
    assert!(served[0].contains(&name), "{:?}", served[0]);
    // Nothing ran for the cache hit.
    assert!(
        !lines_with(&second.tool_invocation_id)
            .iter()
            .any(|l| l.contains("action completed")),
        "a cache hit runs nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_garbled_metadata_is_harmless() {
    logs();
    let server = start_plain(|_| {}).await;

    let action = sh("echo without metadata").build();
    action.upload(&server).await;
    let (name, response) = execute_with(&server, action.request(), None).await;
    assert_eq!(exec::status_code(&response), tonic::Code::Ok);
    assert_eq!(stored_metadata(&server, &name), None);

    // Bytes that are not a RequestMetadata message.
    let action = sh("echo with garbage metadata").build();
    action.upload(&server).await;
    let (name, response) = execute_with(
        &server,
        action.request(),
        Some(vec![0xff, 0xff, 0xff, 0x07]),
    )
    .await;
    assert_eq!(exec::status_code(&response), tonic::Code::Ok);
    assert_eq!(stored_metadata(&server, &name), None);
    eventually("the \"action completed\" line", || {
        lines_with(&name)
            .iter()
            .any(|l| l.contains("action completed"))
    })
    .await;
}
