//! Bearer tokens and per-instance roles against a real in-process rexd.
//!
//! Tokens come from all three sources (a SHA-256 in the config, a file, an environment
//! variable). For every role, each call that needs it succeeds (or fails for a reason other
//! than authorization) with a token holding the role, is PERMISSION_DENIED naming the role with
//! any token lacking it, and UNAUTHENTICATED with no token or a bad one. Roles are per
//! instance, `"*"` meaning all of them. Health and reflection need no token, and no status
//! message ever repeats a token.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::exec::{self, PATIENCE};
use common::{TestServer, digest};
use futures::StreamExt;
use rexd::auth::{Role, TokenConfig};
use rexd::config::InstanceConfig;
use rexd::proto::bytestream::byte_stream_client::ByteStreamClient;
use rexd::proto::bytestream::{ReadRequest, WriteRequest};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::action_cache_client::ActionCacheClient;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use rexd::proto::remote_execution::execution_client::ExecutionClient;
use sha2::Digest as _;
use tonic::Code;
use tonic::transport::Channel;

// The secrets. Each holds exactly one role on the default instance, except where noted.
const READER: &str = "reader-secret-0f3a9c";
const WRITER: &str = "writer-secret-7b21de";
const EXECUTOR: &str = "executor-secret-55c0aa";
const AC_WRITER: &str = "acwriter-secret-e8d413";
/// Every role, but only on the instance "other".
const OTHER_ONLY: &str = "other-secret-19fe07";
/// Every role on every instance, through `"*"`.
const EVERYWHERE: &str = "star-secret-a4b8c2";
/// Not configured at all.
const BOGUS: &str = "bogus-secret-000000";

const ALL_SECRETS: &[&str] = &[
    READER, WRITER, EXECUTOR, AC_WRITER, OTHER_ONLY, EVERYWHERE, BOGUS,
];

/// The environment variable the executor token is read from.
const TOKEN_ENV: &str = "REXD_AUTH_TEST_EXECUTOR_TOKEN";

const ALL_ROLES: &[Role] = &[Role::Read, Role::Write, Role::Execute, Role::AcWrite];

fn roles(entries: &[(&str, &[Role])]) -> HashMap<String, BTreeSet<Role>> {
    entries
        .iter()
        .map(|(instance, roles)| (instance.to_string(), roles.iter().copied().collect()))
        .collect()
}

fn by_hash(name: &str, secret: &str, roles: HashMap<String, BTreeSet<Role>>) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: Some(hex::encode(sha2::Sha256::digest(secret.as_bytes()))),
        file: None,
        env: None,
        roles,
    }
}

/// A server with every test token, serving the instances "" and "other"; actions run as
/// plain processes. Also returns the temp dir holding the token file.
async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("writer.token");
    // Surrounding whitespace is trimmed.
    std::fs::write(&token_file, format!("  {WRITER}\n")).unwrap();
    // SAFETY: set before any server of this binary reads it, always to the same value; no
    // other code of this test binary touches the environment.
    unsafe { std::env::set_var(TOKEN_ENV, EXECUTOR) };
    let tokens = vec![
        by_hash("alice", READER, roles(&[("", &[Role::Read])])),
        TokenConfig {
            name: "bob".into(),
            sha256: None,
            file: Some(token_file),
            env: None,
            roles: roles(&[("", &[Role::Write])]),
        },
        TokenConfig {
            name: "carol".into(),
            sha256: None,
            file: None,
            env: Some(TOKEN_ENV.into()),
            roles: roles(&[("", &[Role::Execute])]),
        },
        by_hash("dave", AC_WRITER, roles(&[("", &[Role::AcWrite])])),
        by_hash("erin", OTHER_ONLY, roles(&[("other", ALL_ROLES)])),
        by_hash("frank", EVERYWHERE, roles(&[("*", ALL_ROLES)])),
    ];
    let server = common::start_plain_isolated(|c| {
        c.auth.tokens = tokens;
        c.instances = vec![InstanceConfig::named(""), InstanceConfig::named("other")];
    })
    .await;
    (server, dir)
}

/// `message` with the bearer `token` (if any) attached.
fn req<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The outcome of one call, reduced to what authorization decides.
#[derive(Debug)]
enum Outcome {
    Ok,
    Failed(tonic::Status),
}

impl Outcome {
    fn of<T>(result: Result<T, tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(status) => Outcome::Failed(status),
        }
    }

    fn status(&self) -> Option<&tonic::Status> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(s) => Some(s),
        }
    }
}

/// One RPC that needs one role; the payload is whatever makes it succeed once authorized.
#[derive(Clone, Copy, Debug)]
enum Call {
    FindMissing,
    BatchRead,
    GetActionResult,
    Capabilities,
    ByteStreamRead,
    BatchUpdate,
    ByteStreamWrite,
    Execute,
    UpdateActionResult,
}

impl Call {
    const ALL: &[Call] = &[
        Call::FindMissing,
        Call::BatchRead,
        Call::GetActionResult,
        Call::Capabilities,
        Call::ByteStreamRead,
        Call::BatchUpdate,
        Call::ByteStreamWrite,
        Call::Execute,
        Call::UpdateActionResult,
    ];

    fn role(self) -> Role {
        match self {
            Call::FindMissing
            | Call::BatchRead
            | Call::GetActionResult
            | Call::Capabilities
            | Call::ByteStreamRead => Role::Read,
            Call::BatchUpdate | Call::ByteStreamWrite => Role::Write,
            Call::Execute => Role::Execute,
            Call::UpdateActionResult => Role::AcWrite,
        }
    }
}

/// What the calls act on: a stored blob, a stored action (with its result in the cache) and
/// a fresh blob per write.
struct Fixture {
    blob: Vec<u8>,
    action: common::exec::PreparedAction,
}

impl Fixture {
    /// Uploads the blob and the action and runs it once, as the all-powerful token.
    async fn new(server: &TestServer, instance: &str) -> Fixture {
        let blob = format!("stored blob of instance {instance:?}").into_bytes();
        let action = exec::sh(format!("echo ran on {instance:?}")).build();
        let channel = server.channel().await;
        let mut cas = ContentAddressableStorageClient::new(channel.clone());
        let blobs: Vec<&Vec<u8>> = [&blob, &action.action_blob, &action.command_blob]
            .into_iter()
            .chain(&action.directories)
            .chain(&action.files)
            .collect();
        let response = cas
            .batch_update_blobs(req(
                re::BatchUpdateBlobsRequest {
                    instance_name: instance.into(),
                    requests: blobs
                        .iter()
                        .map(|b| re::batch_update_blobs_request::Request {
                            digest: Some(digest(b)),
                            data: b.to_vec().into(),
                            compressor: 0,
                        })
                        .collect(),
                    ..Default::default()
                },
                Some(EVERYWHERE),
            ))
            .await
            .expect("uploading the fixture")
            .into_inner();
        assert!(
            response
                .responses
                .iter()
                .all(|r| r.status.as_ref().unwrap().code == 0)
        );
        let mut request = action.request();
        request.instance_name = instance.into();
        let stream = ExecutionClient::new(channel)
            .execute(req(request, Some(EVERYWHERE)))
            .await
            .expect("running the fixture action")
            .into_inner();
        let updates = exec::collect(stream).await;
        let response = exec::response(updates.last().unwrap());
        assert_eq!(exec::status_code(&response), Code::Ok, "{response:?}");
        Fixture { blob, action }
    }
}

/// Makes `call` on `instance` with `token`, returning what came of it.
async fn invoke(
    channel: &Channel,
    fixture: &Fixture,
    call: Call,
    instance: &str,
    token: Option<&str>,
) -> Outcome {
    let instance_name = instance.to_string();
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel.clone());
    let mut bs = ByteStreamClient::new(channel.clone());
    let blob_digest = digest(&fixture.blob);
    let blob_resource = if instance.is_empty() {
        common::blob_path(&fixture.blob)
    } else {
        format!("{instance}/{}", common::blob_path(&fixture.blob))
    };
    match call {
        Call::FindMissing => Outcome::of(
            cas.find_missing_blobs(req(
                re::FindMissingBlobsRequest {
                    instance_name,
                    blob_digests: vec![blob_digest],
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
        Call::BatchRead => Outcome::of(
            cas.batch_read_blobs(req(
                re::BatchReadBlobsRequest {
                    instance_name,
                    digests: vec![blob_digest],
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
        Call::GetActionResult => Outcome::of(
            ac.get_action_result(req(
                re::GetActionResultRequest {
                    instance_name,
                    action_digest: Some(fixture.action.digest.clone()),
                    ..Default::default()
                },
                token,
            ))
            .await,
        ),
        Call::Capabilities => Outcome::of(
            CapabilitiesClient::new(channel.clone())
                .get_capabilities(req(re::GetCapabilitiesRequest { instance_name }, token))
                .await,
        ),
        Call::ByteStreamRead => {
            let result = bs
                .read(req(
                    ReadRequest {
                        resource_name: blob_resource,
                        ..Default::default()
                    },
                    token,
                ))
                .await;
            match result {
                Err(status) => Outcome::Failed(status),
                Ok(response) => {
                    let mut data = Vec::new();
                    let mut stream = response.into_inner();
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(chunk) => data.extend_from_slice(&chunk.data),
                            Err(status) => return Outcome::Failed(status),
                        }
                    }
                    assert_eq!(data, fixture.blob);
                    Outcome::Ok
                }
            }
        }
        Call::BatchUpdate => {
            let data = uuid::Uuid::new_v4().to_string().into_bytes();
            let result = cas
                .batch_update_blobs(req(
                    re::BatchUpdateBlobsRequest {
                        instance_name,
                        requests: vec![re::batch_update_blobs_request::Request {
                            digest: Some(digest(&data)),
                            data: data.into(),
                            compressor: 0,
                        }],
                        ..Default::default()
                    },
                    token,
                ))
                .await;
            if let Ok(r) = &result {
                assert_eq!(r.get_ref().responses[0].status.as_ref().unwrap().code, 0);
            }
            Outcome::of(result)
        }
        Call::ByteStreamWrite => {
            let data = uuid::Uuid::new_v4().to_string().into_bytes();
            let path = common::upload_path(&data);
            let resource_name = if instance.is_empty() {
                path
            } else {
                format!("{instance}/{path}")
            };
            let message = WriteRequest {
                resource_name,
                write_offset: 0,
                finish_write: true,
                data: data.into(),
            };
            Outcome::of(
                bs.write(req(futures::stream::iter(vec![message]), token))
                    .await,
            )
        }
        Call::Execute => {
            let mut request = fixture.action.request();
            request.instance_name = instance_name;
            // Run it again rather than answer from the cache, so the whole path is taken.
            request.skip_cache_lookup = true;
            match ExecutionClient::new(channel.clone())
                .execute(req(request, token))
                .await
            {
                Err(status) => Outcome::Failed(status),
                Ok(response) => {
                    let updates = exec::collect(response.into_inner()).await;
                    let response = exec::response(updates.last().unwrap());
                    assert_eq!(exec::status_code(&response), Code::Ok, "{response:?}");
                    Outcome::Ok
                }
            }
        }
        Call::UpdateActionResult => {
            let fake = digest(uuid::Uuid::new_v4().as_bytes());
            Outcome::of(
                ac.update_action_result(req(
                    re::UpdateActionResultRequest {
                        instance_name,
                        action_digest: Some(fake),
                        action_result: Some(re::ActionResult {
                            exit_code: 0,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    token,
                ))
                .await,
            )
        }
    }
}

/// No status message may repeat a secret.
#[track_caller]
fn assert_no_secret(status: &tonic::Status) {
    for secret in ALL_SECRETS {
        assert!(
            !status.message().contains(secret),
            "a status message repeats a token: {status:?}"
        );
        let details = String::from_utf8_lossy(status.details());
        assert!(!details.contains(secret), "status details repeat a token");
        for (_, value) in status.metadata().clone().into_headers().iter() {
            assert!(
                !String::from_utf8_lossy(value.as_bytes()).contains(secret),
                "response metadata repeats a token: {status:?}"
            );
        }
    }
}

#[track_caller]
fn assert_allowed(outcome: &Outcome, what: &str) {
    if let Some(status) = outcome.status() {
        assert_no_secret(status);
        assert!(
            !matches!(
                status.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
            "{what} should be authorized, got {status:?}"
        );
    }
}

#[track_caller]
fn assert_denied(outcome: &Outcome, role: Role, instance: &str, what: &str) {
    let status = outcome
        .status()
        .unwrap_or_else(|| panic!("{what} should be PERMISSION_DENIED, but it succeeded"));
    assert_no_secret(status);
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{what}: wrong code; message: {:?}",
        status.message()
    );
    let needle = format!("the \"{}\" role", role.name());
    assert!(
        status.message().contains(&needle),
        "{what}: the message should name the role ({needle}): {:?}",
        status.message()
    );
    assert!(
        status.message().contains(&format!("instance {instance:?}")),
        "{what}: the message should name the instance: {:?}",
        status.message()
    );
}

#[track_caller]
fn assert_unauthenticated(outcome: &Outcome, what: &str) {
    let status = outcome
        .status()
        .unwrap_or_else(|| panic!("{what} should be UNAUTHENTICATED, but it succeeded"));
    assert_no_secret(status);
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "{what}: wrong code; message: {:?}",
        status.message()
    );
}

/// The single-role tokens and the role each holds on the default instance.
const SINGLE_ROLE: &[(&str, Role)] = &[
    (READER, Role::Read),
    (WRITER, Role::Write),
    (EXECUTOR, Role::Execute),
    (AC_WRITER, Role::AcWrite),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_allows_its_calls_and_only_those() {
    let (server, _dir) = server().await;
    let fixture = Fixture::new(&server, "").await;
    let channel = server.channel().await;
    for &call in Call::ALL {
        for &(token, role) in SINGLE_ROLE {
            let what = format!("{call:?} with the {:?} token", role.name());
            let outcome = invoke(&channel, &fixture, call, "", Some(token)).await;
            if role == call.role() {
                assert_allowed(&outcome, &what);
                assert!(
                    matches!(outcome, Outcome::Ok),
                    "{what} should succeed: {outcome:?}"
                );
            } else {
                assert_denied(&outcome, call.role(), "", &what);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_bad_token_is_unauthenticated() {
    let (server, _dir) = server().await;
    let fixture = Fixture::new(&server, "").await;
    let channel = server.channel().await;
    for &call in Call::ALL {
        let outcome = invoke(&channel, &fixture, call, "", None).await;
        assert_unauthenticated(&outcome, &format!("{call:?} without a token"));
        let status = outcome.status().unwrap();
        assert!(
            status.message().contains("Bearer"),
            "the message should say how to send a token: {:?}",
            status.message()
        );
        let outcome = invoke(&channel, &fixture, call, "", Some(BOGUS)).await;
        assert_unauthenticated(&outcome, &format!("{call:?} with an unknown token"));
    }

    // Malformed headers: not "Bearer", no token after it, a token with stray bytes.
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    for header in [
        format!("Basic {READER}"),
        READER.to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        format!("Bearer {READER}x"),
        format!("Bearer x{READER}"),
    ] {
        let mut request = tonic::Request::new(re::FindMissingBlobsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let outcome = Outcome::of(cas.find_missing_blobs(request).await);
        assert_unauthenticated(&outcome, &format!("authorization: {header:?}"));
    }
    // The scheme is case-insensitive as far as "bearer" goes.
    let mut request = tonic::Request::new(re::FindMissingBlobsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("bearer {READER}").parse().unwrap());
    cas.find_missing_blobs(request)
        .await
        .expect("a lower-case bearer scheme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_per_instance() {
    let (server, _dir) = server().await;
    let default = Fixture::new(&server, "").await;
    let other = Fixture::new(&server, "other").await;
    let channel = server.channel().await;
    for &call in Call::ALL {
        let role = call.role();
        // Roles on "other" only: denied on "", allowed on "other".
        let outcome = invoke(&channel, &default, call, "", Some(OTHER_ONLY)).await;
        assert_denied(
            &outcome,
            role,
            "",
            &format!("{call:?} on \"\" with the other-only token"),
        );
        let outcome = invoke(&channel, &other, call, "other", Some(OTHER_ONLY)).await;
        assert_allowed(
            &outcome,
            &format!("{call:?} on \"other\" with the other-only token"),
        );
        assert!(matches!(outcome, Outcome::Ok), "{call:?}: {outcome:?}");

        // A role on "" gives nothing on "other".
        let (token, _) = SINGLE_ROLE.iter().find(|(_, r)| *r == role).unwrap();
        let outcome = invoke(&channel, &other, call, "other", Some(token)).await;
        assert_denied(
            &outcome,
            role,
            "other",
            &format!("{call:?} on \"other\" with a token for \"\""),
        );

        // "*" covers both.
        for (fixture, instance) in [(&default, ""), (&other, "other")] {
            let outcome = invoke(&channel, fixture, call, instance, Some(EVERYWHERE)).await;
            assert_allowed(
                &outcome,
                &format!("{call:?} on {instance:?} with the \"*\" token"),
            );
            assert!(matches!(outcome, Outcome::Ok), "{call:?}: {outcome:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instance_is_not_a_permission_question() {
    let (server, _dir) = server().await;
    let fixture = Fixture::new(&server, "").await;
    let channel = server.channel().await;
    let outcome = invoke(
        &channel,
        &fixture,
        Call::FindMissing,
        "nope",
        Some(EVERYWHERE),
    )
    .await;
    let status = outcome.status().expect("an unknown instance is an error");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Still, without a token nothing at all is revealed.
    let outcome = invoke(&channel, &fixture, Call::FindMissing, "nope", None).await;
    assert_unauthenticated(
        &outcome,
        "FindMissing on an unknown instance without a token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_and_wait_execution_need_roles() {
    use rexd::proto::longrunning::operations_client::OperationsClient;
    use rexd::proto::longrunning::{GetOperationRequest, ListOperationsRequest};
    let (server, _dir) = server().await;
    let fixture = Fixture::new(&server, "").await;
    let channel = server.channel().await;
    // An operation to look at: one that runs (a cache hit retains no operation).
    let request = re::ExecuteRequest {
        skip_cache_lookup: true,
        ..fixture.action.request()
    };
    let stream = ExecutionClient::new(channel.clone())
        .execute(req(request, Some(EXECUTOR)))
        .await
        .unwrap()
        .into_inner();
    let name = exec::collect(stream).await.last().unwrap().name.clone();

    let mut ops = OperationsClient::new(channel.clone());
    let get = |token: Option<&'static str>| {
        let mut ops = ops.clone();
        let name = name.clone();
        async move {
            Outcome::of(
                ops.get_operation(req(GetOperationRequest { name }, token))
                    .await,
            )
        }
    };
    assert_allowed(&get(Some(READER)).await, "GetOperation with read");
    assert!(matches!(get(Some(READER)).await, Outcome::Ok));
    assert_denied(
        &get(Some(WRITER)).await,
        Role::Read,
        "",
        "GetOperation with write",
    );
    assert_unauthenticated(&get(None).await, "GetOperation without a token");
    assert_denied(
        &get(Some(OTHER_ONLY)).await,
        Role::Read,
        "",
        "GetOperation of an operation of \"\" with the other-only token",
    );
    let list = ops
        .list_operations(req(ListOperationsRequest::default(), None))
        .await;
    assert_unauthenticated(&Outcome::of(list), "ListOperations without a token");

    let wait = |token: Option<&'static str>| {
        let name = name.clone();
        let channel = channel.clone();
        async move {
            Outcome::of(
                ExecutionClient::new(channel)
                    .wait_execution(req(re::WaitExecutionRequest { name }, token))
                    .await,
            )
        }
    };
    assert!(matches!(wait(Some(EXECUTOR)).await, Outcome::Ok));
    assert_denied(
        &wait(Some(READER)).await,
        Role::Execute,
        "",
        "WaitExecution with read",
    );
    assert_unauthenticated(&wait(None).await, "WaitExecution without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (server, _dir) = server().await;
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?} without a token: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = tokio::time::timeout(
        PATIENCE,
        ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter(vec![request])),
    )
    .await
    .unwrap()
    .expect("reflection without a token")
    .into_inner();
    let response = tokio::time::timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .expect("a reflection response")
        .expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "build.bazel.remote.execution.v2.ContentAddressableStorage"),
        "{names:?}"
    );
}

/// A bad token table is refused before anything is served: `Settings`, which every server is
/// opened from, cannot be built from it, and the binary exits at start-up naming the problem.
#[test]
fn bad_token_configuration_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    for (token, needle) in [
        (
            "name = \"nowhere\"\nenv = \"REXD_AUTH_TEST_UNSET_VARIABLE\"",
            "REXD_AUTH_TEST_UNSET_VARIABLE",
        ),
        ("name = \"short\"\nsha256 = \"abc\"", "sha256"),
    ] {
        let text = format!("[[auth.tokens]]\n{token}\nroles = {{}}\n");
        let config = rexd::Config::from_toml(&text).unwrap();
        let err = rexd::config::Settings::new(config)
            .err()
            .expect("a server with a bad token must not serve");
        assert!(err.to_string().contains(needle), "{err}");

        let path = dir.path().join("rexd.toml");
        std::fs::write(&path, &text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rexd"))
            .arg("--config")
            .arg(&path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        let output = match rx.recv_timeout(PATIENCE) {
            Ok(output) => output.unwrap(),
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("rexd kept serving with a bad token ({needle})");
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "rexd started: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}

#[test]
fn check_config_reads_token_files_as_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rexd.toml");
    let missing = dir.path().join("no-such-token");
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"ci\"\nfile = {:?}\nroles = {{ \"*\" = [\"read\"] }}\n",
            missing.display().to_string()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rexd"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a missing token file passed check-config"
    );
    assert!(stderr.contains("no-such-token"), "{stderr}");
    std::fs::write(&missing, "s3cret\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rexd"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
