//! An input tree drawn as nested `<details>`: directories open on a click, files link to
//! their blobs, every entry shows its size. Bounded, so a huge tree cannot make a huge page.

use std::cell::Cell;

use maud::{Markup, html};

use super::layout;
use crate::digest::Digest;
use crate::inspect::ActionView;

/// Most entries drawn; the rest are counted in a note.
const MAX_ENTRIES: usize = 5_000;
/// Deepest directory drawn; the page is built by recursion, on an async thread's stack.
const MAX_DEPTH: usize = 64;

pub fn input_tree(view: &ActionView) -> Markup {
    let Some(root) = &view.input_root else {
        return html! { p.muted { "No input root." } };
    };
    let drawn = Cell::new(0usize);
    html! {
        div #input-tree { (directory(view, root, "(input root)", 0, &drawn)) }
        @if drawn.get() > MAX_ENTRIES { p.note { "Only the first " (MAX_ENTRIES) " entries are shown." } }
    }
}

fn directory(
    view: &ActionView,
    digest: &Digest,
    name: &str,
    depth: usize,
    drawn: &Cell<usize>,
) -> Markup {
    if depth >= MAX_DEPTH {
        return html! { div.muted { (name) "/ (deeper levels not shown)" } };
    }
    let function = digest.function();
    let Some(dir) = view.directories.get(digest) else {
        return html! { div { (name) "/ " span.muted { "(not in the CAS)" } } };
    };
    let digest_of = |d: &Option<crate::proto::remote_execution::Digest>| {
        d.as_ref()
            .and_then(|d| Digest::from_proto(function, d).ok())
    };
    html! {
        details open[depth == 0] {
            summary { (name) "/ " span.muted { "(" (dir.files.len() + dir.directories.len() + dir.symlinks.len()) " entries) " } a href=(layout::blob_href(digest, Some("directory"))) { "proto" } }
            @for sub in &dir.directories {
                @if take(drawn) {
                    @match digest_of(&sub.digest) {
                        Some(d) => (directory(view, &d, &sub.name, depth + 1, drawn)),
                        None => div { (sub.name) "/ (bad digest)" },
                    }
                }
            }
            @for f in &dir.files {
                @if take(drawn) {
                    @if let Some(d) = digest_of(&f.digest) {
                        div.file {
                            a href=(layout::blob_href(&d, Some("text"))) { (f.name) }
                            " " span.muted { (layout::bytes(d.size())) @if f.is_executable { ", executable" } }
                        }
                    }
                }
            }
            @for s in &dir.symlinks {
                div { (s.name) " → " (s.target) }
            }
        }
    }
}

/// Counts one more entry; whether it may still be drawn.
fn take(drawn: &Cell<usize>) -> bool {
    drawn.set(drawn.get() + 1);
    drawn.get() <= MAX_ENTRIES
}
