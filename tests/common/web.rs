//! A server with its web UI on a free loopback port, and a small HTTP client for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use rexd::Config;

use super::TestServer;
use super::exec::PATIENCE;

/// A plain-processes server (so actions may wait on files outside their root) with the UI
/// on a port of its own.
pub async fn start_with_ui(edit: impl FnOnce(&mut Config)) -> (TestServer, SocketAddr) {
    // rexd does not report the address its HTTP listener bound; the test picks the port.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = super::exec::start_plain(|c| {
        c.metrics.listen = Some(addr);
        edit(c);
    })
    .await;
    // The listener is bound inside the server task: wait until it answers.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while get(addr, "/healthz", None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the UI on {addr} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (server, addr)
}

/// A response: status, headers and body as text.
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `path`, with `authorization` set to `auth` if given.
pub async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> reqwest::Result<Page> {
    let mut request = client().get(format!("http://{addr}{path}"));
    if let Some(value) = auth {
        request = request.header("authorization", value);
    }
    into_page(request.send().await?).await
}

/// GET `path` with a `cookie` header.
pub async fn get_with_cookie(addr: SocketAddr, path: &str, cookie: &str) -> reqwest::Result<Page> {
    into_page(
        client()
            .get(format!("http://{addr}{path}"))
            .header("cookie", cookie)
            .send()
            .await?,
    )
    .await
}

/// POST a urlencoded form.
pub async fn post_form(
    addr: SocketAddr,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Result<Page> {
    let body: String = form
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let response = client()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await?;
    into_page(response).await
}

async fn into_page(response: reqwest::Response) -> reqwest::Result<Page> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok(Page {
        status,
        headers,
        body,
    })
}

/// The path of an action's page.
pub fn action_path(d: &rexd::proto::remote_execution::Digest) -> String {
    format!("/actions/sha256/{}/{}", d.hash, d.size_bytes)
}
