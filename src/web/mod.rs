//! The web UI: server-rendered pages on the plain-HTTP listener, next to `/metrics` and
//! `/healthz`. It reads what the server already holds (the engine, the stores, the
//! [`crate::history`]) and writes nothing, so serving it costs the gRPC paths only the
//! locks its reads take.
//!
//! With auth tokens configured every page needs a token with `read` (a bearer header or
//! the cookie the login form sets), because commands and environments can hold secrets.

mod action_page;
mod actions;
mod auth;
mod blobs;
mod invocations;
mod layout;
mod miss;
mod overview;
mod tree;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::html;

use crate::auth::{Caller, Role};
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::state::Context;

/// The UI's routes, with authentication and the security headers applied.
pub fn router(ctx: Context) -> Router {
    let state = WebState {
        ctx,
        rates: std::sync::Arc::new(overview::Rates::default()),
    };
    let pages = Router::new()
        .route("/", get(overview::page))
        .route("/actions", get(actions::list))
        .route("/actions/{function}/{hash}/{size}", get(action_page::page))
        .route("/invocations", get(invocations::page))
        .route("/blobs/{function}/{hash}/{size}", get(blobs::blob))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ));
    Router::new()
        .merge(pages)
        .route("/login", get(auth::form).post(auth::login))
        .route("/logout", get(auth::logout))
        .route(
            "/static/style.css",
            get(|| static_file("text/css", layout::STYLE)),
        )
        .route(
            "/static/app.js",
            get(|| static_file("text/javascript", layout::SCRIPT)),
        )
        .fallback(|| async { not_found("no such page") })
        .with_state(state)
        .layer(middleware::map_response(security_headers))
}

/// What every handler reads.
#[derive(Clone)]
pub struct WebState {
    ctx: Context,
    rates: std::sync::Arc<overview::Rates>,
}

impl WebState {
    /// Whether the page's viewer may see `instance`'s records.
    fn may_read(caller: &Caller, instance: &str) -> bool {
        crate::auth::authorize(caller, instance, Role::Read).is_ok()
    }
}

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// No page may be framed, run inline script or load anything from elsewhere.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page saying what went wrong, with the status an [`Error`] maps to.
pub struct PageError(Error);

impl From<Error> for PageError {
    fn from(e: Error) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match tonic::Status::from(self.0.clone()).code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = layout::page("Error", html! { p.error { (self.0.to_string()) } });
        (status, body).into_response()
    }
}

fn not_found(what: &str) -> Response {
    PageError(Error::Absent(what.to_string())).into_response()
}

/// The digest a path names, checked: a known function, a well-formed hash and size.
fn digest_from_path(function: &str, hash: &str, size: &str) -> Result<Digest, Error> {
    let function = DigestFunction::from_name(function)
        .ok_or_else(|| Error::BadInput(format!("unknown digest function {function:?}")))?;
    let size: i64 = size
        .parse()
        .map_err(|_| Error::BadInput(format!("size {size:?} is not a number")))?;
    Digest::parse(function, hash, size)
}

type Page = Result<maud::Markup, PageError>;
