//! One action's page: what it ran (command, environment, platform), on what (the input
//! tree), what it produced (outputs, stdout and stderr), where its time went, whether the
//! cache answered it, why it missed, and the command that reproduces it.

use axum::Extension;
use axum::extract::{Path, State};
use futures::TryStreamExt;
use maud::{Markup, html};

use super::{Page, WebState, digest_from_path, layout, miss, tree};
use crate::auth::Caller;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::history::{OutcomeKind, Record};
use crate::inspect::ActionView;
use crate::proto::remote_execution::{ActionResult, ExecutedActionMetadata};
use crate::resource::Compression;

/// Bytes of stdout or stderr shown inline; a link leads to the whole.
const INLINE_OUTPUT: u64 = 16 * 1024;

pub async fn page(
    State(state): State<WebState>,
    Extension(caller): Extension<Caller>,
    Path((function, hash, size)): Path<(String, String, String)>,
) -> Page {
    let digest = digest_from_path(&function, &hash, &size)?;
    let record = state.ctx.history.latest(&digest);
    let instance = match &record {
        Some(r) => r.instance.clone(),
        None => state.ctx.settings.written.instances[0].name.clone(),
    };
    if !WebState::may_read(&caller, &instance) {
        return Err(Error::Denied(format!("this token may not read instance {instance:?}")).into());
    }
    let source = crate::inspect::local::StoreSource(state.ctx.store.clone());
    let view = ActionView::load(&source, digest).await?;
    let result = match record.as_ref().and_then(|r| r.result.clone()) {
        Some(result) => Some(result),
        None => state.ctx.store.action_result(&instance, &digest).await?,
    };
    let stdout = inline_output(&state, &result, digest.function(), true).await;
    let stderr = inline_output(&state, &result, digest.function(), false).await;
    let previous = match &record {
        Some(r) if r.outcome.kind() != OutcomeKind::CacheHit => {
            miss::explain(&state, r, &view).await
        }
        _ => None,
    };
    let rerun = rerun_command(&state, &digest, &instance);
    let body = html! {
        (summary(&digest, record.as_deref(), &instance))
        @if let Some(m) = result.as_ref().and_then(|r| r.execution_metadata.as_ref()) {
            h2 { "Timeline" }
            (timeline(m))
        }
        @if let Some(explained) = &previous {
            h2 { "Why it missed the cache" }
            (explained)
        }
        h2 { "Command" }
        (command(&view))
        h2 { "Outputs" }
        @match &result {
            None => p.muted { "No result: the action cache holds none, and none is retained." },
            Some(r) => (outputs(r, digest.function(), &stdout, &stderr)),
        }
        h2 { "Inputs" }
        (tree::input_tree(&view))
        h2 { "Reproduce it" }
        pre #rerun { (rerun) }
    };
    Ok(layout::page(
        &format!("Action {}", super::actions::short(&digest)),
        body,
    ))
}

/// The `rexd action rerun` line for this server, as a developer would type it.
fn rerun_command(state: &WebState, digest: &Digest, instance: &str) -> String {
    let written = &state.ctx.settings.written;
    let scheme = if written.tls.is_some() {
        "grpcs"
    } else {
        "grpc"
    };
    let listen = written.listen;
    let address = if listen.ip().is_unspecified() {
        format!("THIS-HOST:{}", listen.port())
    } else {
        listen.to_string()
    };
    let instance = if instance.is_empty() {
        String::new()
    } else {
        format!(" --instance {instance}")
    };
    format!(
        "rexd action rerun {}/{} --server {scheme}://{address}{instance}",
        digest.hash_hex(),
        digest.size(),
    )
}

fn summary(digest: &Digest, record: Option<&Record>, instance: &str) -> Markup {
    html! {
        table {
            tr { th { "Digest" } td.mono { (digest.to_string()) " " a href=(layout::blob_href(digest, Some("action"))) { "Action proto" } } }
            tr { th { "Instance" } td { (format!("{instance:?}")) } }
            @if let Some(r) = record {
                tr { th { "Outcome" } td class=(r.outcome.kind().name()) { (r.outcome.describe()) } }
                tr { th { "From the cache" } td { (if r.outcome.kind() == OutcomeKind::CacheHit { "yes" } else { "no" }) } }
                tr { th { "When" } td { (layout::utc(r.at)) " (" (layout::ago(r.at)) ")" } }
                tr { th { "Mnemonic" } td { (r.client.mnemonic) } }
                tr { th { "Target" } td { (r.client.target) } }
                tr { th { "Invocation" } td.mono { (r.client.invocation) } }
                tr { th { "Tool" } td { (r.client.tool) } }
                @if let Some(op) = &r.operation { tr { th { "Operation" } td.mono { (op) } } }
            } @else {
                tr { th { "History" } td.muted { "Not in the retained history." } }
            }
        }
    }
}

fn command(view: &ActionView) -> Markup {
    let Some(c) = &view.command else {
        return html! { p.error { "The CAS no longer holds this action's Command." } };
    };
    let timeout = view.action.timeout.as_ref().map_or(0, |t| t.seconds);
    html! {
        pre #arguments { (shell_words(&c.arguments)) }
        table {
            tr { th { "Working directory" } td.mono { (if c.working_directory.is_empty() { "(input root)" } else { &c.working_directory }) } }
            tr { th { "Timeout" } td { (if timeout == 0 { "server default".to_string() } else { format!("{timeout} s") }) } }
            tr { th { "Outputs declared" } td.mono { (view.output_paths().join(" ")) } }
        }
        h2 { "Environment" }
        table #environment {
            @for (name, value) in view.environment() { tr { td.mono { (name) } td.mono { (value) } } }
        }
        h2 { "Platform" }
        @let platform = view.platform();
        @if platform.is_empty() { p.muted { "No properties: any worker of the default pool." } }
        table {
            @for (name, value) in platform { tr { td.mono { (name) } td.mono { (value) } } }
        }
    }
}

/// The arguments as one line a shell would read back the same.
fn shell_words(args: &[String]) -> String {
    let quote = |a: &String| {
        if !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
        {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    args.iter().map(quote).collect::<Vec<_>>().join(" ")
}

fn timeline(m: &ExecutedActionMetadata) -> Markup {
    let at = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9)
    };
    let start = at(&m.queued_timestamp).or(at(&m.worker_start_timestamp));
    let end = at(&m.worker_completed_timestamp);
    let (Some(start), Some(end)) = (start, end) else {
        return html! { p.muted { "The executor reported no timestamps." } };
    };
    let total = (end - start).max(1e-6);
    let phases = [
        (
            "queued",
            "ph-queued",
            at(&m.queued_timestamp),
            at(&m.worker_start_timestamp),
        ),
        (
            "input fetch",
            "ph-fetch",
            at(&m.input_fetch_start_timestamp),
            at(&m.input_fetch_completed_timestamp),
        ),
        (
            "execution",
            "ph-exec",
            at(&m.execution_start_timestamp),
            at(&m.execution_completed_timestamp),
        ),
        (
            "output upload",
            "ph-upload",
            at(&m.output_upload_start_timestamp),
            at(&m.output_upload_completed_timestamp),
        ),
    ];
    let x = |t: f64| ((t - start) / total * 1000.0).clamp(0.0, 1000.0);
    html! {
        svg.timeline #timeline viewBox="0 0 1000 18" preserveAspectRatio="none" width="100%" height="18" {
            @for (name, class, from, to) in &phases {
                @if let (Some(from), Some(to)) = (from, to) {
                    rect class=(class) x=(format!("{:.1}", x(*from))) y="0" height="18" width=(format!("{:.1}", (x(*to) - x(*from)).max(1.0))) { title { (name) } }
                }
            }
        }
        div.legend {
            @for (name, class, from, to) in &phases {
                @if let (Some(from), Some(to)) = (from, to) {
                    span { i class=(class) {} (name) " " (layout::duration(seconds(to - from))) }
                }
            }
            span.muted { "total " (layout::duration(seconds(total))) " on " (m.worker) }
        }
    }
}

/// A span an executor reported, which may be nonsense (a bot's or a client's timestamps).
fn seconds(span: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(span.max(0.0)).unwrap_or_default()
}

/// Up to [`INLINE_OUTPUT`] bytes of stdout (or stderr), as text, and whether it is cut.
struct Inline {
    text: String,
    cut: bool,
    digest: Option<Digest>,
}

async fn inline_output(
    state: &WebState,
    result: &Option<ActionResult>,
    function: DigestFunction,
    stdout: bool,
) -> Inline {
    let none = Inline {
        text: String::new(),
        cut: false,
        digest: None,
    };
    let Some(r) = result else { return none };
    let (raw, digest) = if stdout {
        (&r.stdout_raw, &r.stdout_digest)
    } else {
        (&r.stderr_raw, &r.stderr_digest)
    };
    if !raw.is_empty() {
        return Inline {
            text: String::from_utf8_lossy(raw).into_owned(),
            cut: false,
            digest: None,
        };
    }
    let Some(digest) = digest
        .as_ref()
        .and_then(|d| Digest::from_proto(function, d).ok())
    else {
        return none;
    };
    let read = async {
        let chunks = state
            .ctx
            .store
            .read(
                digest,
                0,
                INLINE_OUTPUT.min(digest.size()),
                Compression::Identity,
            )
            .await?;
        chunks
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
    };
    match read.await {
        Ok(bytes) => Inline {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            cut: digest.size() > INLINE_OUTPUT,
            digest: Some(digest),
        },
        Err(e) => Inline {
            text: format!("(cannot read it: {e})"),
            cut: false,
            digest: Some(digest),
        },
    }
}

#[allow(deprecated)] // Older clients still read the v2.0 symlink fields.
fn outputs(r: &ActionResult, function: DigestFunction, stdout: &Inline, stderr: &Inline) -> Markup {
    let digest_of = |d: &Option<crate::proto::remote_execution::Digest>| {
        d.as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
    };
    html! {
        p { "Exit code " strong { (r.exit_code) } }
        table #outputs {
            tr { th { "Path" } th { "Size" } th { "" } }
            @for f in &r.output_files {
                @if let Some(d) = digest_of(&f.digest) {
                    tr { td.mono { (f.path) } td { (layout::bytes(d.size())) } td { a href=(layout::blob_href(&d, None)) { "download" } " · " a href=(layout::blob_href(&d, Some("text"))) { "view" } } }
                }
            }
            @for dir in &r.output_directories {
                @if let Some(d) = digest_of(&dir.tree_digest) {
                    tr { td.mono { (dir.path) "/" } td { "tree " (layout::bytes(d.size())) } td { a href=(layout::blob_href(&d, Some("tree"))) { "tree" } } }
                }
            }
            @for link in r.output_symlinks.iter().chain(&r.output_file_symlinks).chain(&r.output_directory_symlinks) {
                tr { td.mono { (link.path) } td { "→ " (link.target) } td {} }
            }
        }
        @for (name, out) in [("stdout", stdout), ("stderr", stderr)] {
            h2 { (name) }
            @if out.text.is_empty() && out.digest.is_none() { p.muted { "(empty)" } } @else {
                pre id=(name) { (out.text) }
                @if let Some(d) = &out.digest {
                    p { a id=(format!("{name}-link")) href=(layout::blob_href(d, Some("text"))) { @if out.cut { "the whole " (name) " (" (layout::bytes(d.size())) ")" } @else { "as a file" } } }
                }
            }
        }
    }
}
