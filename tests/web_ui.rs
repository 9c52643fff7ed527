//! The web UI's HTTP handlers, without a browser: what the pages show, that they escape
//! what clients sent, who may see them, and what a bad path gets.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::exec::{self, sh};
use common::web::{action_path, get, get_with_cookie, post_form, start_with_ui};
use rexd::auth::{Role, TokenConfig};
use sha2::Digest as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_an_action_and_escape_what_it_ran() {
    let (server, addr) = start_with_ui(|_| {}).await;
    let mut action = sh("echo '<script>alert(1)</script>'; echo made > out.txt")
        .file("src/input.txt", b"an input");
    action
        .env
        .push(("SECRET_LOOKING".into(), "<b>bold</b>".into()));
    action.output_files = vec!["out.txt".into()];
    let result = exec::run_ok(&server, &action).await;
    let digest = action.build().digest;

    let list = get(addr, "/actions", None).await.unwrap();
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains(&action_path(&digest)),
        "the actions page links the action"
    );
    assert!(list.body.contains("executed, exit 0"));

    let page = get(addr, &action_path(&digest), None).await.unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        !page.body.contains("<script>alert"),
        "the argument was not escaped"
    );
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        page.body.contains("&lt;b&gt;bold&lt;/b&gt;"),
        "env values are escaped"
    );
    assert!(!page.body.contains("<b>bold"));
    assert!(page.body.contains("input.txt") && page.body.contains("out.txt"));
    assert!(page.body.contains("rexd action rerun"));
    assert!(page.body.contains("id=\"timeline\""));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // stdout, whole, as text that a browser will not sniff into HTML.
    let stdout = result.stdout_digest.unwrap();
    let text = get(
        addr,
        &format!(
            "/blobs/sha256/{}/{}?view=text",
            stdout.hash, stdout.size_bytes
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(text.status, 200);
    assert_eq!(text.body, "<script>alert(1)</script>\n");
    assert!(
        text.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(text.headers["x-content-type-options"], "nosniff");
    // The Command, decoded.
    let command = get(
        addr,
        &format!(
            "/blobs/sha256/{}/{}?view=command",
            hex_sha(&action.build().command_blob),
            action.build().command_blob.len()
        ),
        None,
    )
    .await
    .unwrap();
    assert_eq!(command.status, 200, "{}", command.body);
    assert!(command.body.contains("SECRET_LOOKING") && command.body.contains("&lt;script&gt;"));

    let overview = get(addr, "/", None).await.unwrap();
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("Cache hit ratio"));
    assert_eq!(get(addr, "/invocations", None).await.unwrap().status, 200);
    assert_eq!(get(addr, "/static/app.js", None).await.unwrap().status, 200);
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_get_404_or_400_and_nothing_else() {
    let (_server, addr) = start_with_ui(|_| {}).await;
    let absent = "a".repeat(64);
    for (path, status) in [
        ("/nope", 404),
        ("/static/../Cargo.toml", 404),
        ("/blobs/sha256/zz/1", 400),
        ("/blobs/md5/00/1", 400),
        ("/blobs/sha256/{absent}/-1", 400),
        ("/blobs/sha256/{absent}/5", 404),
        ("/blobs/sha256/{absent}/5?view=command", 404),
        ("/blobs/sha256/{absent}/5?view=nonsense", 400),
        ("/actions/sha256/{absent}/5", 404),
        ("/actions/sha256/{absent}/x", 400),
    ] {
        let path = path.replace("{absent}", &absent);
        let page = get(addr, &path, None).await.unwrap();
        assert_eq!(page.status, status, "{path}: {}", page.body);
    }
    // /healthz and /metrics are where they were.
    assert_eq!(get(addr, "/healthz", None).await.unwrap().body, "ok\n");
    // Without tokens, a DNS name in Host (a rebinding page's) is refused; addresses are not.
    let as_host = |name: &str| {
        reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .header("host", format!("{name}:{}", addr.port()))
            .send()
    };
    let rebound = as_host("evil.example").await.unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    assert!(rebound.text().await.unwrap().contains("rebinding"));
    assert_eq!(as_host("localhost").await.unwrap().status().as_u16(), 200);
}

fn token(name: &str, secret: &str, roles: &[(&str, &[Role])]) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: Some(hex_sha(secret.as_bytes())),
        file: None,
        env: None,
        roles: roles
            .iter()
            .map(|(i, r)| (i.to_string(), r.iter().copied().collect::<BTreeSet<_>>()))
            .collect::<HashMap<_, _>>(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_every_page_needs_a_reader() {
    let (_server, addr) = start_with_ui(|c| {
        c.auth.tokens = vec![
            token("reader", "read-secret", &[("", &[Role::Read])]),
            token("writer", "write-only", &[("", &[Role::Write])]),
        ];
    })
    .await;
    for path in [
        "/",
        "/actions",
        "/invocations",
        &format!("/blobs/sha256/{}/0", hex_sha(b"")),
    ] {
        let none = get(addr, path, None).await.unwrap();
        assert_eq!(none.status, 401, "{path} without a token");
        assert!(none.body.contains("name=\"token\""), "a login form");
        let wrong = get(addr, path, Some("Bearer wrong")).await.unwrap();
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let no_read = get(addr, path, Some("Bearer write-only")).await.unwrap();
        assert_eq!(no_read.status, 403, "{path} with a token that may not read");
        let ok = get(addr, path, Some("Bearer read-secret")).await.unwrap();
        assert_eq!(ok.status, 200, "{path} with a reader's token: {}", ok.body);
    }
    // Health and metrics stay open to probes and scrapers.
    assert_eq!(get(addr, "/healthz", None).await.unwrap().status, 200);

    // The login form: a bad token is refused, a good one sets an HttpOnly cookie.
    let refused = post_form(addr, "/login", &[("token", "wrong")])
        .await
        .unwrap();
    assert_eq!(refused.status, 401);
    assert!(refused.headers.get("set-cookie").is_none());
    let accepted = post_form(addr, "/login", &[("token", "read-secret")])
        .await
        .unwrap();
    assert_eq!(accepted.status, 303);
    let cookie = accepted.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(get_with_cookie(addr, "/", pair).await.unwrap().status, 200);
    assert_eq!(
        get_with_cookie(addr, "/", "rexd_token=forged")
            .await
            .unwrap()
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_keeps_its_bound_and_the_overview_renders_at_it() {
    let (server, addr) = start_with_ui(|c| c.ui.max_actions = 10_000).await;
    let result = rexd::proto::remote_execution::ActionResult::default();
    let function = rexd::digest::DigestFunction::Sha256;
    for n in 0..12_000u64 {
        let digest = rexd::digest::Digest::of(function, &n.to_le_bytes());
        let metadata = rexd::proto::remote_execution::RequestMetadata {
            tool_invocation_id: format!("inv-{}", n % 2000),
            action_mnemonic: "Genrule".into(),
            ..Default::default()
        };
        server
            .ctx
            .history
            .record_hit("", digest, Some(&metadata), &result);
    }
    let (retained, bytes) = server.ctx.history.size();
    assert_eq!(retained, 10_000);
    assert_eq!(
        server.ctx.history.invocations().len(),
        1000,
        "ui.max_invocations"
    );
    let started = std::time::Instant::now();
    let overview = get(addr, "/", None).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(overview.status, 200);
    let actions = get(addr, "/actions?mnemonic=Genrule", None).await.unwrap();
    assert_eq!(actions.status, 200);
    assert!(
        actions.body.contains("500 shown of 10000 retained"),
        "one page, bounded"
    );
    // A figure for the closing note, not an assertion.
    eprintln!("overview with {retained} records ({bytes} bytes) rendered in {elapsed:?}");
}
