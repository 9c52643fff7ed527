//! Capabilities, gRPC health and server reflection. Reflection is checked end to end with a
//! real client, `buf curl`, as an operator would inspect the server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestServer, expect_status};
use rexd::config::InstanceConfig;
use rexd::proto::remote_execution as re;
use rexd::proto::semver::SemVer;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const MIB: i64 = 1024 * 1024;

async fn capabilities(
    server: &TestServer,
    instance: &str,
) -> Result<re::ServerCapabilities, tonic::Status> {
    server
        .capabilities()
        .await
        .get_capabilities(re::GetCapabilitiesRequest {
            instance_name: instance.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer {
        major,
        minor,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_describe_the_cache() {
    let server = TestServer::start().await;
    let caps = capabilities(&server, "").await.unwrap();
    assert_eq!(caps.low_api_version, version(2, 0));
    assert_eq!(caps.high_api_version, version(2, 12));

    let cache = caps.cache_capabilities.expect("cache capabilities");
    let sha256 = re::digest_function::Value::Sha256 as i32;
    let zstd = re::compressor::Value::Zstd as i32;
    assert!(cache.digest_functions.contains(&sha256), "{cache:?}");
    assert!(cache.supported_compressors.contains(&zstd), "{cache:?}");
    assert!(
        cache.supported_batch_update_compressors.contains(&zstd),
        "{cache:?}"
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 * MIB);
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );

    let exec = caps.execution_capabilities.expect("execution capabilities");
    assert_eq!(exec.digest_function, sha256);
    assert_eq!(
        exec.exec_enabled,
        server.ctx.settings.written.execution.enabled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_follow_the_configuration() {
    let server = TestServer::start_with(|c| {
        c.storage.max_batch_total_size = bytesize::ByteSize::mib(8);
        c.execution.enabled = false;
        let mut read_only = InstanceConfig::named("read-only");
        read_only.allow_ac_updates = false;
        c.instances.push(read_only);
    })
    .await;
    let caps = capabilities(&server, "").await.unwrap();
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(cache.max_batch_total_size_bytes, 8 * MIB);
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert!(!caps.execution_capabilities.unwrap().exec_enabled);

    let caps = capabilities(&server, "read-only").await.unwrap();
    let updates = caps
        .cache_capabilities
        .unwrap()
        .action_cache_update_capabilities
        .unwrap();
    assert!(
        !updates.update_enabled,
        "allow_ac_updates = false is advertised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_of_unknown_instance_is_invalid_argument() {
    let server = TestServer::start().await;
    expect_status(
        capabilities(&server, "missing/instance").await,
        Code::InvalidArgument,
        &["unknown instance name \"missing/instance\"", "serves"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in [
        "",
        "build.bazel.remote.execution.v2.Capabilities",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.ActionCache",
        "google.bytestream.ByteStream",
    ] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s}"))
            .into_inner();
        assert_eq!(
            response.status,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let result = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    expect_status(result, Code::NotFound, &["not registered"]);
}

// ---------------------------------------------------------------- reflection through buf curl

/// `buf` from `REXD_BUF`, else `PATH`, else `node_modules/.bin` of the repository (where
/// `npm install @bufbuild/buf` puts it).
fn find_buf() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("REXD_BUF").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "REXD_BUF={} is not a file", path.display());
        return Some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("buf"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("node_modules/.bin/buf");
        local.is_file().then_some(local)
    })
}

/// The buf to use, or `None` after a loud SKIPPED line; with `CI` set, a missing buf fails.
fn buf_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_buf();
    if found.is_none() {
        let why = "buf not found: set REXD_BUF, put buf on PATH, or run \
                   `npm install @bufbuild/buf` in the repository root";
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why} (CI is set, so this fails instead of skipping)");
        }
        eprintln!("\n******** SKIPPED {test}: {why} ********\n");
    }
    found
}

/// Runs `buf curl` with `args` against the server, off the runtime threads, and returns
/// its stdout; fails the test with buf's stderr if buf fails.
async fn buf_curl(buf: PathBuf, server: &TestServer, args: &[&str], path: &str) -> String {
    let url = format!("http://{}{path}", server.addr);
    let mut command = Command::new(&buf);
    command
        .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
        .args(["--connect-timeout", "10", "--timeout", "60s"])
        .args(args)
        .arg(&url);
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("running {}: {e}", buf.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{shown} failed ({}):\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services_to_buf_curl() {
    let Some(buf) = buf_or_skip("reflection_lists_services_to_buf_curl") else {
        return;
    };
    let server = TestServer::start().await;
    let listed = buf_curl(buf, &server, &["--list-services"], "").await;
    let services: Vec<&str> = listed.lines().map(str::trim).collect();
    for expected in [
        "build.bazel.remote.execution.v2.Capabilities",
        "build.bazel.remote.execution.v2.ContentAddressableStorage",
        "build.bazel.remote.execution.v2.ActionCache",
        "google.bytestream.ByteStream",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.contains(&expected),
            "{expected} is not listed in:\n{listed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_capabilities_through_buf_curl() {
    let Some(buf) = buf_or_skip("get_capabilities_through_buf_curl") else {
        return;
    };
    let server = TestServer::start().await;
    let json = buf_curl(
        buf,
        &server,
        &["-d", r#"{"instance_name":""}"#],
        "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
    )
    .await;
    // buf prints the reply as protobuf JSON: camelCase names, enum names, int64 as strings.
    for expected in [
        r#""cacheCapabilities""#,
        r#""SHA256""#,
        r#""ZSTD""#,
        r#""maxBatchTotalSizeBytes": "4194304""#,
        r#""highApiVersion""#,
    ] {
        assert!(
            json.contains(expected),
            "{expected} is not in the reply:\n{json}"
        );
    }
}
