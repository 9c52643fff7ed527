//! Why an executed action missed the cache: the most recent earlier execution of the same
//! target and mnemonic (from RequestMetadata) or, failing that, of a command with the same
//! output paths, and what differs between the two.

use maud::{Markup, html};

use super::{WebState, layout};
use crate::history::Record;
use crate::inspect::{ActionView, diff};

/// Earlier executions searched for a match by target and mnemonic.
const MAX_CANDIDATES: usize = 2_000;
/// Of those, the most whose Command is read to match by output paths.
const MAX_LOADED: usize = 8;

/// The explanation, or `None` when no earlier action matches.
pub async fn explain(state: &WebState, record: &Record, view: &ActionView) -> Option<Markup> {
    let (earlier, earlier_view) = previous(state, record, view).await?;
    let d = diff::diff(&earlier_view, view);
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    Some(html! {
        p { "Compared with the earlier action "
            a.mono href=(layout::action_href(&earlier.action_digest)) { (super::actions::short(&earlier.action_digest)) }
            " (" (layout::ago(earlier.at)) ", " (earlier.client.mnemonic) " " (earlier.client.target) "):" }
        @if d.is_empty() { p { "No difference in arguments, environment, platform or inputs." } }
        table #cache-miss-diff {
            tr { th { "What" } th { "Name" } th { "Before" } th { "After" } }
            @for (what, changes) in [("argument", &d.arguments), ("environment", &d.environment), ("platform", &d.platform), ("setting", &d.settings), ("input changed", &d.inputs_changed)] {
                @for c in changes {
                    tr { td { (what) } td.mono { (c.name) } td.mono { (show(&c.before)) } td.mono { (show(&c.after)) } }
                }
            }
            @for p in &d.inputs_added { tr { td { "input added" } td.mono { (p) } td {} td {} } }
            @for p in &d.inputs_removed { tr { td { "input removed" } td.mono { (p) } td {} td {} } }
        }
        @for note in &d.incomplete { p.note { "Not compared: " (note) } }
        p.muted { "The same with the CLI: " code { "rexd action diff " (earlier.action_digest.hash_hex()) "/" (earlier.action_digest.size()) " " (record.action_digest.hash_hex()) "/" (record.action_digest.size()) } }
    })
}

async fn previous(
    state: &WebState,
    record: &Record,
    view: &ActionView,
) -> Option<(std::sync::Arc<Record>, ActionView)> {
    let source = crate::inspect::local::StoreSource(state.ctx.store.clone());
    let candidates = state.ctx.history.executed_before(record, MAX_CANDIDATES);
    let (target, mnemonic) = (&record.client.target, &record.client.mnemonic);
    if !target.is_empty() {
        let same = candidates
            .iter()
            .filter(|c| c.instance == record.instance)
            .find(|c| &c.client.target == target && &c.client.mnemonic == mnemonic);
        if let Some(c) = same
            && let Ok(v) = ActionView::load(&source, c.action_digest).await
        {
            return Some((c.clone(), v));
        }
    }
    let outputs = view.output_paths();
    if outputs.is_empty() {
        return None;
    }
    for c in candidates
        .iter()
        .filter(|c| c.instance == record.instance)
        .take(MAX_LOADED)
    {
        if let Ok(v) = ActionView::load(&source, c.action_digest).await
            && v.output_paths() == outputs
        {
            return Some((c.clone(), v));
        }
    }
    None
}
