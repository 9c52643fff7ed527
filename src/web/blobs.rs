//! `/blobs/{function}/{hash}/{size}`: a blob from the CAS, streamed as a download, as text
//! (`?view=text`), or decoded and shown as a Directory, Command, Action, ActionResult or
//! Tree (`?view=directory` and so on). Only the blob the path names is ever read.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use maud::html;
use prost::Message;

use super::{PageError, WebState, digest_from_path, layout};
use crate::error::Error;
use crate::proto::remote_execution::{Action, ActionResult, Command, Directory, Tree};
use crate::resource::Compression;

/// Largest blob decoded for display; larger ones can still be downloaded.
const MAX_RENDERED: u64 = 4 << 20;

#[derive(serde::Deserialize)]
pub struct Params {
    view: Option<String>,
}

pub async fn blob(
    State(state): State<WebState>,
    Path((function, hash, size)): Path<(String, String, String)>,
    Query(params): Query<Params>,
) -> Result<Response, PageError> {
    let digest = digest_from_path(&function, &hash, &size)?;
    let store = &state.ctx.store;
    let view = params.view.unwrap_or_default();
    let (content_type, disposition) = match view.as_str() {
        "" => ("application/octet-stream", "attachment"),
        "text" => ("text/plain; charset=utf-8", "inline"),
        proto => return rendered(&state, digest, proto).await,
    };
    let chunks = store
        .read(digest, 0, digest.size(), Compression::Identity)
        .await?;
    let filename = format!("{}-{}", digest.hash_hex(), digest.size());
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, digest.size().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("{disposition}; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(chunks.map_err(|e| std::io::Error::other(e.to_string()))),
    )
        .into_response())
}

async fn rendered(
    state: &WebState,
    digest: crate::digest::Digest,
    view: &str,
) -> Result<Response, PageError> {
    const VIEWS: [&str; 5] = ["directory", "command", "action", "result", "tree"];
    if !VIEWS.contains(&view) {
        return Err(Error::BadInput(format!(
            "unknown view {view:?}: use text, directory, command, action, result or tree"
        ))
        .into());
    }
    if digest.size() > MAX_RENDERED {
        return Err(Error::BadInput(format!(
            "{digest} is larger than {} and is not rendered; download it instead",
            layout::bytes(MAX_RENDERED)
        ))
        .into());
    }
    let source = crate::inspect::local::StoreSource(state.ctx.store.clone());
    let data = crate::inspect::BlobSource::read(&source, &digest)
        .await?
        .ok_or_else(|| Error::Absent(format!("the CAS does not hold {digest}")))?;
    fn show<M: Message + Default + std::fmt::Debug>(
        data: &[u8],
        what: &str,
    ) -> Result<String, Error> {
        M::decode(data)
            .map(|m| format!("{m:#?}"))
            .map_err(|e| Error::BadInput(format!("the blob is not a valid {what}: {e}")))
    }
    let text = match view {
        "directory" => show::<Directory>(&data, "Directory")?,
        "command" => show::<Command>(&data, "Command")?,
        "action" => show::<Action>(&data, "Action")?,
        "result" => show::<ActionResult>(&data, "ActionResult")?,
        _ => show::<Tree>(&data, "Tree")?,
    };
    let body = html! {
        p { a href=(layout::blob_href(&digest, None)) { "Download" } " · " a href=(layout::blob_href(&digest, Some("text"))) { "as text" } }
        pre { (text) }
    };
    Ok(layout::page(&format!("{view} {digest}"), body).into_response())
}
