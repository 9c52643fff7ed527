//! One remembered action, what the client said about it, and how it ended; the filters the
//! actions page offers; and the per-invocation summary.

use std::time::SystemTime;

use crate::digest::Digest;
use crate::proto::remote_execution::{ActionResult, ExecuteResponse, RequestMetadata};

/// Fixed cost of a record beyond its strings and result: the struct, the Arc, the deque
/// slot and the digest map entry.
const RECORD_OVERHEAD: u64 = 256;

/// What the client said about the action (REAPI RequestMetadata), flattened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientInfo {
    pub tool: String,
    pub invocation: String,
    pub correlated_invocations: String,
    pub mnemonic: String,
    pub target: String,
}

impl ClientInfo {
    pub fn from_proto(m: &RequestMetadata) -> Self {
        let tool = m
            .tool_details
            .as_ref()
            .map(|t| {
                format!("{} {}", t.tool_name, t.tool_version)
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        ClientInfo {
            tool,
            invocation: m.tool_invocation_id.clone(),
            correlated_invocations: m.correlated_invocations_id.clone(),
            mnemonic: m.action_mnemonic.clone(),
            target: m.target_id.clone(),
        }
    }

    fn bytes(&self) -> u64 {
        (self.tool.len()
            + self.invocation.len()
            + self.correlated_invocations.len()
            + self.mnemonic.len()
            + self.target.len()) as u64
    }
}

/// How an action ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    CacheHit,
    Success,
    /// Ran, and exited non-zero.
    Failed {
        exit_code: i32,
    },
    /// Did not run to the end: the gRPC status that ended it.
    Error {
        code: String,
        message: String,
    },
}

/// [`Outcome`] without its details, for filters and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    CacheHit,
    Success,
    Failed,
    Error,
}

impl OutcomeKind {
    pub const ALL: [OutcomeKind; 4] = [
        OutcomeKind::CacheHit,
        OutcomeKind::Success,
        OutcomeKind::Failed,
        OutcomeKind::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::CacheHit => "cache-hit",
            OutcomeKind::Success => "success",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Error => "error",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Outcome {
    pub fn of(response: &ExecuteResponse) -> Self {
        let status = response.status.clone().unwrap_or_default();
        if status.code != 0 {
            return Outcome::Error {
                code: format!("{:?}", tonic::Code::from(status.code)),
                message: status.message,
            };
        }
        match response.result.as_ref().map_or(0, |r| r.exit_code) {
            0 if response.cached_result => Outcome::CacheHit,
            0 => Outcome::Success,
            exit_code => Outcome::Failed { exit_code },
        }
    }

    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::CacheHit => OutcomeKind::CacheHit,
            Outcome::Success => OutcomeKind::Success,
            Outcome::Failed { .. } => OutcomeKind::Failed,
            Outcome::Error { .. } => OutcomeKind::Error,
        }
    }

    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Outcome::CacheHit => "cache hit".into(),
            Outcome::Success => "executed, exit 0".into(),
            Outcome::Failed { exit_code } => format!("executed, exit {exit_code}"),
            Outcome::Error { code, message } => format!("{code}: {message}"),
        }
    }
}

/// One remembered action.
#[derive(Debug)]
pub struct Record {
    /// Consecutive from 1; the UI's link to this record.
    pub seq: u64,
    /// When it finished or was served.
    pub at: SystemTime,
    pub instance: String,
    pub action_digest: Digest,
    pub client: ClientInfo,
    pub outcome: Outcome,
    /// The operation's name, for an execution.
    pub operation: Option<String>,
    /// The result, when there was one (failed runs are not in the action cache).
    pub result: Option<ActionResult>,
    /// What it costs against the history's byte bound; see [`Record::cost`].
    pub(super) bytes: u64,
}

impl Record {
    /// What the record costs against the history's byte bound.
    pub fn cost(&self) -> u64 {
        self.bytes
    }

    /// The cost of this record whose result encodes to `result_bytes` (measured before the
    /// history's lock is taken).
    pub(super) fn measure(&self, result_bytes: u64) -> u64 {
        let outcome = match &self.outcome {
            Outcome::Error { code, message } => code.len() + message.len(),
            _ => 0,
        } as u64;
        RECORD_OVERHEAD
            + self.instance.len() as u64
            + self.client.bytes()
            + outcome
            + self.operation.as_ref().map_or(0, |o| o.len() as u64)
            + result_bytes
    }
}

/// What the actions page filters by; empty fields admit everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub outcome: Option<OutcomeKind>,
    pub mnemonic: String,
    pub invocation: String,
    /// A substring of the target id.
    pub target: String,
}

impl Filter {
    pub fn admits(&self, r: &Record) -> bool {
        self.outcome.is_none_or(|k| r.outcome.kind() == k)
            && (self.mnemonic.is_empty() || r.client.mnemonic == self.mnemonic)
            && (self.invocation.is_empty() || r.client.invocation == self.invocation)
            && (self.target.is_empty() || r.client.target.contains(&self.target))
    }
}

/// One tool invocation's actions, as the invocations page shows them.
#[derive(Clone, Debug)]
pub struct InvocationStats {
    /// The instance of its first action; the UI shows the row to those who may read it.
    pub instance: String,
    pub tool: String,
    pub actions: u64,
    pub cache_hits: u64,
    pub executed: u64,
    pub failed: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

impl InvocationStats {
    pub(super) fn new(first: &Record) -> Self {
        InvocationStats {
            instance: first.instance.clone(),
            tool: first.client.tool.clone(),
            actions: 0,
            cache_hits: 0,
            executed: 0,
            failed: 0,
            first_seen: first.at,
            last_seen: first.at,
        }
    }

    pub(super) fn add(&mut self, r: &Record) {
        self.actions += 1;
        self.last_seen = r.at;
        match r.outcome.kind() {
            OutcomeKind::CacheHit => self.cache_hits += 1,
            OutcomeKind::Success => self.executed += 1,
            OutcomeKind::Failed | OutcomeKind::Error => {
                self.executed += 1;
                self.failed += 1;
            }
        }
    }
}
