//! Helpers for remote-execution tests: build an Action (Command, input tree) in memory, upload
//! it, run Execute to the end of its stream, and read results back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use rexd::config::{Config, SandboxBackend};
use rexd::proto::longrunning::operations_client::OperationsClient;
use rexd::proto::longrunning::{Operation, operation};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::execution_client::ExecutionClient;
use rexd::proto::remote_execution::execution_stage::Value as Stage;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{CLIENT_MAX_MESSAGE, TestServer, digest, upload_blobs};

/// The PATH actions get, since the server passes no host environment through.
pub const PATH: &str = "/usr/bin:/bin";
/// Longest a test waits for a stream message or an observable condition before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// rexd running actions as plain processes (no namespaces), so a test can hand them paths
/// outside their exec root to signal through, as `edit` further changes the configuration.
/// Its worker uids are its own, from [`super::private_uid_base`] through `start_with`.
pub async fn start_plain(edit: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.sandbox.backend = SandboxBackend::Plain;
        cfg.execution.local_workers = Some(2);
        edit(cfg);
    })
    .await
}

/// An action described in test terms; [`ActionBuilder::build`] turns it into blobs.
#[derive(Clone, Default)]
pub struct ActionBuilder {
    pub arguments: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_directory: String,
    pub output_files: Vec<String>,
    pub output_directories: Vec<String>,
    pub output_paths: Vec<String>,
    /// Input files by slash-separated path: contents and executable bit.
    pub files: Vec<(String, Vec<u8>, bool)>,
    /// Input symlinks by slash-separated path: target.
    pub symlinks: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub do_not_cache: bool,
    /// Action.platform properties.
    pub platform: Vec<(String, String)>,
    /// A hand-built input root, used instead of `files` and `symlinks` (for invalid trees);
    /// its subdirectories must be in `extra_directories`.
    pub raw_root: Option<re::Directory>,
    pub extra_directories: Vec<re::Directory>,
}

/// `/bin/sh -c script` with PATH set.
pub fn sh(script: impl Into<String>) -> ActionBuilder {
    ActionBuilder {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), PATH.into())],
        ..Default::default()
    }
}

impl ActionBuilder {
    pub fn file(mut self, path: &str, contents: &[u8]) -> Self {
        self.files.push((path.into(), contents.to_vec(), false));
        self
    }

    pub fn executable(mut self, path: &str, contents: &[u8]) -> Self {
        self.files.push((path.into(), contents.to_vec(), true));
        self
    }

    pub fn build(&self) -> PreparedAction {
        let mut directories = Vec::new();
        let root = match &self.raw_root {
            Some(root) => {
                for d in &self.extra_directories {
                    directories.push(d.encode_to_vec());
                }
                let blob = root.encode_to_vec();
                let d = digest(&blob);
                directories.push(blob);
                d
            }
            None => {
                let mut tree = DirBuild::default();
                for (path, data, exec) in &self.files {
                    let (dir, name) = tree.parent_of(path);
                    dir.files.insert(name, (data.clone(), *exec));
                }
                for (path, target) in &self.symlinks {
                    let (dir, name) = tree.parent_of(path);
                    dir.symlinks.insert(name, target.clone());
                }
                tree.encode(&mut directories)
            }
        };
        #[allow(deprecated)]
        let command = re::Command {
            arguments: self.arguments.clone(),
            environment_variables: self
                .env
                .iter()
                .map(|(name, value)| re::command::EnvironmentVariable {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            working_directory: self.working_directory.clone(),
            output_files: self.output_files.clone(),
            output_directories: self.output_directories.clone(),
            output_paths: self.output_paths.clone(),
            ..Default::default()
        };
        let command_blob = command.encode_to_vec();
        let action = re::Action {
            command_digest: Some(digest(&command_blob)),
            input_root_digest: Some(root),
            timeout: self.timeout.map(|t| prost_types::Duration {
                seconds: t.as_secs() as i64,
                nanos: t.subsec_nanos() as i32,
            }),
            do_not_cache: self.do_not_cache,
            platform: (!self.platform.is_empty()).then(|| re::Platform {
                properties: self
                    .platform
                    .iter()
                    .map(|(name, value)| re::platform::Property {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let action_blob = action.encode_to_vec();
        let mut files: Vec<Vec<u8>> = self.files.iter().map(|f| f.1.clone()).collect();
        files.sort();
        files.dedup();
        PreparedAction {
            digest: digest(&action_blob),
            action_blob,
            command_blob,
            directories,
            files,
        }
    }
}

/// An input tree under construction.
#[derive(Default)]
struct DirBuild {
    files: BTreeMap<String, (Vec<u8>, bool)>,
    dirs: BTreeMap<String, DirBuild>,
    symlinks: BTreeMap<String, String>,
}

impl DirBuild {
    /// The directory that holds `path`, created as needed, and the last component.
    fn parent_of(&mut self, path: &str) -> (&mut DirBuild, String) {
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap().to_string();
        let mut dir = self;
        for part in parts {
            dir = dir.dirs.entry(part.to_string()).or_default();
        }
        (dir, name)
    }

    /// Encodes this directory (children first) into `out`; returns its digest.
    fn encode(&self, out: &mut Vec<Vec<u8>>) -> re::Digest {
        let dir = re::Directory {
            files: self
                .files
                .iter()
                .map(|(name, (data, exec))| re::FileNode {
                    name: name.clone(),
                    digest: Some(digest(data)),
                    is_executable: *exec,
                    ..Default::default()
                })
                .collect(),
            directories: self
                .dirs
                .iter()
                .map(|(name, sub)| re::DirectoryNode {
                    name: name.clone(),
                    digest: Some(sub.encode(out)),
                })
                .collect(),
            symlinks: self
                .symlinks
                .iter()
                .map(|(name, target)| re::SymlinkNode {
                    name: name.clone(),
                    target: target.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let blob = dir.encode_to_vec();
        let d = digest(&blob);
        out.push(blob);
        d
    }
}

/// The blobs of an action, ready to upload.
pub struct PreparedAction {
    pub digest: re::Digest,
    pub action_blob: Vec<u8>,
    pub command_blob: Vec<u8>,
    /// Every Directory of the input tree, encoded; the root is last.
    pub directories: Vec<Vec<u8>>,
    /// Distinct input file contents.
    pub files: Vec<Vec<u8>>,
}

impl PreparedAction {
    /// Uploads every blob except those in `skip`.
    pub async fn upload_except(&self, server: &TestServer, skip: &[&[u8]]) {
        let blobs: Vec<&[u8]> = [&self.action_blob, &self.command_blob]
            .into_iter()
            .chain(&self.directories)
            .chain(&self.files)
            .map(Vec::as_slice)
            .filter(|b| !skip.contains(b))
            .collect();
        upload_blobs(server, &blobs).await;
    }

    pub async fn upload(&self, server: &TestServer) {
        self.upload_except(server, &[]).await;
    }

    /// An ExecuteRequest for the default instance.
    pub fn request(&self) -> re::ExecuteRequest {
        re::ExecuteRequest {
            action_digest: Some(self.digest.clone()),
            ..Default::default()
        }
    }
}

pub async fn execution_client(server: &TestServer) -> ExecutionClient<Channel> {
    ExecutionClient::new(server.channel().await)
        .max_decoding_message_size(CLIENT_MAX_MESSAGE)
        .max_encoding_message_size(CLIENT_MAX_MESSAGE)
}

pub async fn operations_client(server: &TestServer) -> OperationsClient<Channel> {
    OperationsClient::new(server.channel().await)
}

/// Starts Execute and returns its stream of updates.
pub async fn start(
    server: &TestServer,
    request: re::ExecuteRequest,
) -> Result<Streaming<Operation>, tonic::Status> {
    Ok(execution_client(server)
        .await
        .execute(request)
        .await?
        .into_inner())
}

/// The next update of `stream`, checked for the invariants every update obeys.
pub async fn next_update(stream: &mut Streaming<Operation>) -> Operation {
    let op = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the operation stream stalled")
        .expect("the operation stream failed")
        .expect("the operation stream ended before the operation was done");
    assert!(
        !matches!(op.result, Some(operation::Result::Error(_))),
        "Operation.error must never be set: {op:?}"
    );
    assert_eq!(op.done, op.result.is_some(), "done iff a result: {op:?}");
    op
}

/// Reads `stream` to its end; returns every update, the last one done and COMPLETED.
pub async fn collect(mut stream: Streaming<Operation>) -> Vec<Operation> {
    let mut updates = Vec::new();
    loop {
        let op = next_update(&mut stream).await;
        let done = op.done;
        updates.push(op);
        if done {
            break;
        }
    }
    let last = updates.last().unwrap();
    assert_eq!(
        stage(last),
        Stage::Completed,
        "the last update is COMPLETED"
    );
    for op in &updates {
        assert_eq!(op.name, last.name, "every update names the same operation");
    }
    let rest = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream should end after the final update");
    assert!(
        matches!(rest, Ok(None)),
        "nothing follows the final update: {rest:?}"
    );
    updates
}

/// Waits on `stream` until the operation reaches `wanted`; returns that update.
pub async fn wait_for_stage(stream: &mut Streaming<Operation>, wanted: Stage) -> Operation {
    loop {
        let op = next_update(stream).await;
        if stage(&op) == wanted {
            return op;
        }
        assert!(
            !op.done,
            "the operation finished before reaching {wanted:?}: {op:?}"
        );
    }
}

pub fn metadata(op: &Operation) -> re::ExecuteOperationMetadata {
    let any = op.metadata.as_ref().expect("every update carries metadata");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    );
    re::ExecuteOperationMetadata::decode(&any.value[..]).unwrap()
}

pub fn stage(op: &Operation) -> Stage {
    Stage::try_from(metadata(op).stage).expect("a known stage")
}

/// The ExecuteResponse of a finished operation.
pub fn response(op: &Operation) -> re::ExecuteResponse {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
            );
            re::ExecuteResponse::decode(&any.value[..]).unwrap()
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

/// The code of an ExecuteResponse's status (OK when unset).
pub fn status_code(response: &re::ExecuteResponse) -> tonic::Code {
    tonic::Code::from(response.status.as_ref().map_or(0, |s| s.code))
}

/// Runs a prepared, uploaded request to the end; checks the final update names the action.
pub async fn execute(server: &TestServer, request: re::ExecuteRequest) -> re::ExecuteResponse {
    let wanted = request.action_digest.clone();
    let stream = start(server, request).await.expect("Execute accepted");
    let updates = collect(stream).await;
    for op in &updates {
        assert_eq!(metadata(op).action_digest, wanted, "metadata.action_digest");
    }
    response(updates.last().unwrap())
}

/// Uploads `action`, runs it and returns the response.
pub async fn run(server: &TestServer, action: &ActionBuilder) -> re::ExecuteResponse {
    let prepared = action.build();
    prepared.upload(server).await;
    execute(server, prepared.request()).await
}

/// Like [`run`], asserting that the action ran and exited 0.
pub async fn run_ok(server: &TestServer, action: &ActionBuilder) -> re::ActionResult {
    let response = run(server, action).await;
    assert_eq!(
        status_code(&response),
        tonic::Code::Ok,
        "{:?}",
        response.status
    );
    let result = response.result.expect("a result");
    assert_eq!(result.exit_code, 0, "the action failed: {result:?}");
    result
}

/// Reads a blob through BatchReadBlobs, which must find it.
pub async fn read_blob(server: &TestServer, d: &re::Digest) -> Vec<u8> {
    let (code, data) = super::storage::batch_read(server, d).await;
    assert_eq!(code, tonic::Code::Ok, "reading {d:?}");
    data
}

/// The text of the blob `d` (an Option, as digests are in protos).
pub async fn read_text(server: &TestServer, d: &Option<re::Digest>) -> String {
    String::from_utf8(read_blob(server, d.as_ref().expect("a digest")).await).unwrap()
}

/// Polls `condition` every few milliseconds, failing after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lines of a text file outside the sandbox (empty if it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether process `pid` is alive (a zombie counts as dead).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// A temp directory outside every exec root that actions may write to and test code may
/// read: world-writable, since rexd running as root drops actions to a per-worker uid.
pub fn outside_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// An empty file in `dir` that actions running under different worker uids can all append to.
pub fn shared_file(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

/// A shell snippet that waits until the file `go` exists.
pub fn wait_for_file(go: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.01; done", go.display())
}
