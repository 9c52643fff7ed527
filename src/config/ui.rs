//! The `[ui]` section: how much of the recent past the web UI and `rexd action` can show.
//! The history is in memory only, so its bounds are the whole of its cost.

use bytesize::ByteSize;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// Most recent actions (executions and cache hits) retained; the oldest go first.
    pub max_actions: usize,
    /// Most bytes those records may hold (results, metadata and names).
    pub max_history_bytes: ByteSize,
    /// Most tool invocations summarised on the invocations page; the least recent go first.
    pub max_invocations: usize,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            max_actions: 10_000,
            max_history_bytes: ByteSize::mib(64),
            max_invocations: 1_000,
        }
    }
}
