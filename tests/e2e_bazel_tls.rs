//! End to end: real Bazel 4.2.3 (Debian `bazel-bootstrap`) builds and tests the fixture
//! workspace with rexd as its remote executor, authenticating with a bearer token
//! (`--remote_header=authorization=Bearer ...`), over TLS (`grpcs://localhost:PORT`, with a
//! CA made by the test passed as `--tls_certificate`) and over plaintext. The token holds
//! read, write and execute but not ac-write: remote execution needs no client writes to the
//! action cache. A build with a wrong token fails with UNAUTHENTICATED.
//!
//! Debian's Bazel cannot do gRPC over TLS at all (its netty is built without ALPN and the
//! Bazel server crashes before connecting); the TLS test detects exactly that failure and
//! skips loudly, while the token test over plaintext still runs.
//!
//! Skipped loudly if /usr/bin/bazel is missing (fails instead when `CI` is set). Fully offline.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::TestServer;
use common::bazel::{self, Workspace, bazel_with};
use common::tls::{Ca, server_tls_config, write_pem};
use rexd::auth::{Role, TokenConfig};
use sha2::Digest as _;

const TOKEN: &str = "bazel-e2e-token-6d1f0c9a";

/// Flags for remote execution on `url` with a bearer `token`, plus `extra` (TLS settings);
/// like `bazel::remote_exec_flags` otherwise.
fn exec_flags(url: &str, token: &str, extra: &[String]) -> Vec<String> {
    let mut flags = vec![
        format!("--remote_executor={url}"),
        format!("--remote_header=authorization=Bearer {token}"),
        "--spawn_strategy=remote".into(),
        "--remote_local_fallback=false".into(),
        "--remote_download_outputs=all".into(),
        "--remote_retries=1".into(),
        "--remote_timeout=120s".into(),
    ];
    flags.extend_from_slice(extra);
    flags
}

/// The token Bazel uses: read, write and execute on every instance.
fn token_config() -> TokenConfig {
    TokenConfig {
        name: "bazel".into(),
        sha256: Some(hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))),
        file: None,
        env: None,
        roles: HashMap::from([(
            "*".to_string(),
            BTreeSet::from([Role::Read, Role::Write, Role::Execute]),
        )]),
    }
}

/// Whether the Bazel server of `ws` crashed because its netty cannot negotiate ALPN, which
/// gRPC over TLS needs: Debian's bazel-bootstrap 4.2.3 ships a netty stripped of it. The
/// reason is only in the server's log (the client just exits with code 37).
fn bazel_lacks_alpn(ws: &Workspace) -> bool {
    let info = bazel::bazel(ws, &["info", "output_base"]);
    let Some(base) = info
        .output
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('/'))
    else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("java.log")
            && std::fs::read_to_string(e.path())
                .is_ok_and(|log| log.contains("JDK provider does not support ALPN protocol"))
    })
}

/// Build, test, clean and rebuild (all cache hits) with the right token; then a build with a
/// wrong token fails. With `skip_without_alpn`, a Bazel that cannot do TLS at all skips the
/// test. Blocking.
fn build_and_test(url: &str, extra: &[String], skip_without_alpn: bool) {
    // 1. The right token: every spawn runs on rexd.
    let ws = Workspace::new();
    let flags = exec_flags(url, TOKEN, extra);
    let run = bazel_with(&ws, &["build", "//..."], &flags);
    if skip_without_alpn && !run.success() && bazel_lacks_alpn(&ws) {
        eprintln!();
        eprintln!("==============================================================");
        eprintln!("SKIPPED: this Bazel cannot speak gRPC over TLS at all: its netty");
        eprintln!("(Debian bazel-bootstrap, netty 4.1.48 without ALPN) fails with");
        eprintln!("\"JDK provider does not support ALPN protocol\" before connecting.");
        eprintln!("==============================================================");
        eprintln!();
        return;
    }
    run.assert_success();
    let s = run.summary();
    assert!(s.remote() > 0, "nothing ran remotely: {s:?}");
    assert_eq!(s.local(), 0, "processes ran locally: {s:?}");
    assert_eq!(
        s.remote(),
        s.non_internal(),
        "every non-internal process must be remote: {s:?}"
    );
    ws.assert_outputs();

    // 2. The sh_test runs remotely too.
    let run = bazel_with(&ws, &["test", "//..."], &flags);
    run.assert_success();
    assert!(run.output.contains("PASSED"), "{}", run.output);
    assert_eq!(run.summary().local(), 0, "{:?}", run.summary());

    // 3. clean + rebuild: everything comes back from rexd's action cache.
    bazel::bazel(&ws, &["clean", "--color=no", "--curses=no"]).assert_success();
    ws.assert_outputs_absent();
    let run = bazel_with(&ws, &["build", "//..."], &flags);
    run.assert_success();
    let s = run.summary();
    assert!(s.remote_cache_hit() > 0, "no remote cache hits: {s:?}");
    assert_eq!(
        s.remote_cache_hit(),
        s.non_internal(),
        "every non-internal process must be a remote cache hit: {s:?}\n{}",
        run.output
    );
    ws.assert_outputs();
    drop(ws);

    // 4. A wrong token: nothing can be executed, the build fails and says why.
    let ws = Workspace::new();
    let run = bazel_with(
        &ws,
        &["build", "//..."],
        &exec_flags(url, "not-the-token", extra),
    );
    assert!(!run.success(), "a build with a wrong token must fail");
    assert!(
        run.output.contains("UNAUTHENTICATED"),
        "Bazel should report UNAUTHENTICATED:\n{}",
        run.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_remote_execution_over_tls_with_a_token() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let pems = tempfile::tempdir().unwrap();
    let ca = Ca::new("rexd e2e CA");
    let ca_file = write_pem(pems.path(), "ca.pem", &ca.cert_pem);
    let tls = server_tls_config(pems.path(), &ca.server_cert(), None);
    let server = TestServer::start_with(|c| {
        c.tls = Some(tls);
        c.auth.tokens = vec![token_config()];
    })
    .await;
    // The certificate names localhost (and 127.0.0.1).
    let url = format!("grpcs://localhost:{}", server.addr.port());
    let extra = vec![format!("--tls_certificate={}", ca_file.display())];
    tokio::task::spawn_blocking(move || build_and_test(&url, &extra, true))
        .await
        .expect("bazel test body panicked");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_remote_execution_with_a_token() {
    if !bazel::bazel_or_skip() {
        return;
    }
    let server = TestServer::start_with(|c| c.auth.tokens = vec![token_config()]).await;
    let url = server.url();
    tokio::task::spawn_blocking(move || build_and_test(&url, &[], false))
        .await
        .expect("bazel test body panicked");
    drop(server);
}

/// Bazel 2.1 from npm (`@bazel/bazel-linux_x64`), whose bundled netty does speak TLS; it
/// sends no custom headers, so this run covers TLS alone and the run above covers the token.
fn bazel2() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("REXD_BAZEL2")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64")
        });
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Bazel 2.1 is missing in CI: npm install @bazel/bazel-linux_x64@2.1.0 (see .ci/run)"
    );
    eprintln!("SKIPPED: Bazel 2.1 not found (npm install --no-save @bazel/bazel-linux_x64@2.1.0)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_2_remote_execution_over_tls() {
    let Some(bazel) = bazel2() else { return };
    let pems = tempfile::tempdir().unwrap();
    let ca = Ca::new("rexd e2e CA");
    let ca_file = write_pem(pems.path(), "ca.pem", &ca.cert_pem);
    let tls = server_tls_config(pems.path(), &ca.server_cert(), None);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    let url = format!("grpcs://localhost:{}", server.addr.port());
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("WORKSPACE"), "").unwrap();
    std::fs::write(
        ws.path().join("BUILD"),
        "genrule(name = \"hello\", outs = [\"hello.txt\"], cmd = \"echo hello over tls > $@\")\n\
         genrule(name = \"upper\", srcs = [\":hello\"], outs = [\"upper.txt\"], \
         cmd = \"tr a-z A-Z < $< > $@\")\n",
    )
    .unwrap();
    let root = concat!(env!("CARGO_TARGET_TMPDIR"), "/bazel2-root");
    let ws_path = ws.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        let run = |args: &[String]| {
            std::process::Command::new(&bazel)
                .arg(format!("--output_user_root={root}"))
                .arg("--max_idle_secs=30")
                .args(args)
                .current_dir(&ws_path)
                .output()
                .expect("running Bazel 2.1")
        };
        let output = run(&[
            "build".into(),
            "//:upper".into(),
            format!("--remote_executor={url}"),
            format!("--tls_certificate={}", ca_file.display()),
            "--spawn_strategy=remote".into(),
            "--remote_local_fallback=false".into(),
        ]);
        let _ = run(&["shutdown".into()]);
        output
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "Bazel 2.1 over TLS failed:\n{log}");
    let upper = std::fs::read_to_string(ws.path().join("bazel-bin/upper.txt")).unwrap();
    assert_eq!(upper, "HELLO OVER TLS\n");
    let ran = server
        .ctx
        .execution
        .as_ref()
        .unwrap()
        .operations()
        .list("")
        .len();
    assert!(
        ran >= 2,
        "both genrules ran on rexd ({ran} operations):\n{log}"
    );
}
