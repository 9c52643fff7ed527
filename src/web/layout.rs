//! The frame every page shares (navigation, stylesheet, script) and the small formatters
//! the pages use. maud escapes every interpolated value, so nothing a client sent (a
//! command line, an environment value, a target name) can become markup.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, html};

pub const STYLE: &str = include_str!("static/style.css");
pub const SCRIPT: &str = include_str!("static/app.js");

/// A whole page.
pub fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · rexd" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "rexd" }
                    a href="/" { "Overview" }
                    a href="/actions" { "Actions" }
                    a href="/invocations" { "Invocations" }
                    a href="/metrics" { "Metrics" }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// Bytes for people: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// A duration for people: 850 µs, 12.3 ms, 4.2 s, 3 min 10 s.
pub fn duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        1_000_000..120_000_000 => format!("{:.1} s", us as f64 / 1e6),
        _ => format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60),
    }
}

/// How long ago `at` was.
pub fn ago(at: SystemTime) -> String {
    let elapsed = SystemTime::now().duration_since(at).unwrap_or_default();
    if elapsed < Duration::from_secs(1) {
        return "just now".to_string();
    }
    format!("{} ago", duration(Duration::from_secs(elapsed.as_secs())))
}

/// A timestamp as UTC, to the second (RFC 3339).
pub fn utc(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The link to a blob's page.
pub fn blob_href(digest: &crate::digest::Digest, view: Option<&str>) -> String {
    let base = format!(
        "/blobs/{}/{}/{}",
        digest.function().name(),
        digest.hash_hex(),
        digest.size()
    );
    match view {
        Some(v) => format!("{base}?view={v}"),
        None => base,
    }
}

/// The link to an action's page.
pub fn action_href(digest: &crate::digest::Digest) -> String {
    format!(
        "/actions/{}/{}/{}",
        digest.function().name(),
        digest.hash_hex(),
        digest.size()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_sizes_read_well() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_601_600);
        assert_eq!(utc(at), "2026-12-07T00:00:00Z");
        assert_eq!(duration(Duration::from_micros(1500)), "1.5 ms");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
