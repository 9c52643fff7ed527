//! The actions page: recent executions and cache hits, newest first, filtered by outcome,
//! mnemonic, invocation and target as RequestMetadata named them.

use axum::Extension;
use axum::extract::{Query, State};
use maud::{Markup, html};

use super::{WebState, layout};
use crate::auth::Caller;
use crate::history::{Filter, OutcomeKind, Record};

/// Rows on one page; the history keeps more, which the filters reach.
const PAGE_ROWS: usize = 500;

#[derive(serde::Deserialize, Default)]
pub struct Params {
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    mnemonic: String,
    #[serde(default)]
    invocation: String,
    #[serde(default)]
    target: String,
}

pub async fn list(
    State(state): State<WebState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Params>,
) -> Markup {
    let filter = Filter {
        outcome: OutcomeKind::from_name(&params.outcome),
        mnemonic: params.mnemonic.clone(),
        invocation: params.invocation.clone(),
        target: params.target.clone(),
    };
    let rows: Vec<_> = state.ctx.history.recent_where(&filter, PAGE_ROWS, |r| {
        WebState::may_read(&caller, &r.instance)
    });
    let (retained, _) = state.ctx.history.size();
    let body = html! {
        form.filters method="get" action="/actions" {
            select name="outcome" {
                option value="" { "any outcome" }
                @for kind in OutcomeKind::ALL {
                    option value=(kind.name()) selected[params.outcome == kind.name()] { (kind.name()) }
                }
            }
            input name="mnemonic" placeholder="mnemonic" value=(params.mnemonic);
            input name="invocation" placeholder="invocation id" value=(params.invocation);
            input name="target" placeholder="target contains" value=(params.target);
            button type="submit" { "Filter" }
        }
        p.muted { (rows.len()) " shown of " (retained) " retained (at most " (PAGE_ROWS) " a page)." }
        div #live data-live { (table(&rows)) }
    };
    layout::page("Actions", body)
}

pub fn table(rows: &[std::sync::Arc<Record>]) -> Markup {
    html! {
        table #actions {
            tr { th { "When" } th { "Outcome" } th { "Mnemonic" } th { "Target" } th { "Action" } th { "Worker" } th { "Invocation" } }
            @for r in rows {
                @let kind = r.outcome.kind();
                tr {
                    td { (layout::ago(r.at)) }
                    td class=(kind.name()) { (r.outcome.describe()) }
                    td { (r.client.mnemonic) }
                    td { (r.client.target) }
                    td.mono { a href=(layout::action_href(&r.action_digest)) { (short(&r.action_digest)) } }
                    td { (r.result.as_ref().and_then(|x| x.execution_metadata.as_ref()).map(|m| m.worker.as_str()).unwrap_or("")) }
                    td.mono {
                        @if !r.client.invocation.is_empty() {
                            a href=(format!("/actions?invocation={}", urlencode(&r.client.invocation))) { (r.client.invocation) }
                        }
                    }
                }
            }
        }
    }
}

/// A digest as its first twelve hex digits and size.
pub fn short(d: &crate::digest::Digest) -> String {
    format!("{}…/{}", &d.hash_hex()[..12], d.size())
}

/// Percent-encodes a query value.
pub fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
