//! Who may see the UI. Off when the server has no tokens; otherwise every page needs a
//! token with `read` on some served instance, sent as `authorization: Bearer ...` or held in
//! the HttpOnly cookie the login form sets. Lists then show only the instances it may read.

use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{WebState, layout};
use crate::auth::Caller;

const COOKIE: &str = "rexd_token";

/// The token a request carries, as an `authorization` header value.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return value.to_str().ok().map(str::to_string);
    }
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| format!("Bearer {token}"))
}

/// Lets the request through, with its caller, if it may read; else the login form.
pub async fn require_read(
    State(state): State<WebState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.ctx.settings.authenticator;
    if !auth.enabled()
        && let Some(refused) = open_access_refused(&state, request.headers())
    {
        return login_page(StatusCode::FORBIDDEN, refused);
    }
    let caller: Caller = match auth.authenticate(presented(request.headers()).as_deref()) {
        Ok(caller) => caller,
        Err(e) => return login_page(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let instances = &state.ctx.settings.written.instances;
    if !instances
        .iter()
        .any(|i| WebState::may_read(&caller, &i.name))
    {
        return login_page(
            StatusCode::FORBIDDEN,
            "this token has no read role on any instance of this server",
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Without tokens the UI is open, so it answers only where that is safe: not when the gRPC
/// port demands client certificates (the UI would bypass them), and only to a `Host` that is
/// an IP address or `localhost`, so a web page cannot reach it through DNS rebinding.
fn open_access_refused(state: &WebState, headers: &HeaderMap) -> Option<&'static str> {
    let written = &state.ctx.settings.written;
    if written.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) {
        return Some(
            "the gRPC port requires client certificates, so the UI needs [[auth.tokens]] too",
        );
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let safe = name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    (!safe).then_some(
        "without [[auth.tokens]] the UI answers only to an IP address or localhost \
         (a DNS name could be a rebinding attack); open it by address, or configure tokens",
    )
}

fn login_form(message: &str) -> Markup {
    html! {
        @if !message.is_empty() { p.error { (message) } }
        form method="post" action="/login" {
            label { "Token " input type="password" name="token" autocomplete="off" autofocus; }
            " " button type="submit" { "Sign in" }
        }
        p.muted { "Any token with the read role. It is kept in an HttpOnly cookie for this site." }
    }
}

fn login_page(status: StatusCode, message: &str) -> Response {
    (status, layout::page("Sign in", login_form(message))).into_response()
}

pub async fn form() -> Markup {
    layout::page("Sign in", login_form(""))
}

#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
}

pub async fn login(State(state): State<WebState>, Form(login): Form<Login>) -> Response {
    let token = login.token.trim();
    let header_value = format!("Bearer {token}");
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_graphic())
        && state
            .ctx
            .settings
            .authenticator
            .authenticate(Some(&header_value))
            .is_ok();
    if !valid {
        return login_page(StatusCode::UNAUTHORIZED, "that token is not valid here");
    }
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_string()),
        ],
    )
        .into_response()
}

pub async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}
