//! The invocations page: one row per tool invocation id (Bazel's `--invocation_id`), with
//! its counts, each linking to its actions.

use axum::Extension;
use axum::extract::State;
use maud::{Markup, html};

use super::actions::urlencode;
use super::{WebState, layout};
use crate::auth::Caller;

pub async fn page(State(state): State<WebState>, Extension(caller): Extension<Caller>) -> Markup {
    let mut invocations = state.ctx.history.invocations();
    invocations.retain(|(_, s)| WebState::may_read(&caller, &s.instance));
    let body = html! {
        p.muted { "The " (invocations.len()) " most recently seen invocations (ui.max_invocations bounds them)." }
        table #invocations {
            tr { th { "Invocation" } th { "Tool" } th { "Actions" } th { "Cache hits" } th { "Executed" } th { "Failed" } th { "First seen" } th { "Last seen" } }
            @for (id, s) in &invocations {
                tr {
                    td.mono { a href=(format!("/actions?invocation={}", urlencode(id))) { (id) } }
                    td { (s.tool) }
                    td { (s.actions) }
                    td.cache-hit { (s.cache_hits) }
                    td { (s.executed) }
                    td class=(if s.failed > 0 { "failed" } else { "" }) { (s.failed) }
                    td { (layout::utc(s.first_seen)) }
                    td { (layout::utc(s.last_seen)) }
                }
            }
        }
    };
    layout::page("Invocations", body)
}
