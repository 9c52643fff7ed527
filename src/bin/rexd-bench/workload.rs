//! The workloads rexd-bench knows, by the names the command line and the reports use, and
//! which of them `all` (or no name) runs.

use clap::ValueEnum;

/// One workload; the order here is the order they run in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    Upload,
    Download,
    Batch,
    FindMissing,
    ExecNoop,
    ExecCached,
    ExecThroughput,
    Stage,
    /// Long mixed load with per-window figures; only run when named.
    Soak,
    /// The object-store tier across `--target` and `--second-target`; only run when named.
    Tier,
    /// A 1 MiB change to a large blob uploaded as FastCDC chunks (SplitBlob/SpliceBlob);
    /// only run when named.
    ChunkedUpdate,
    All,
}

impl Workload {
    pub const EVERY: [Workload; 8] = [
        Workload::Upload,
        Workload::Download,
        Workload::Batch,
        Workload::FindMissing,
        Workload::ExecNoop,
        Workload::ExecCached,
        Workload::ExecThroughput,
        Workload::Stage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Upload => "upload",
            Workload::Download => "download",
            Workload::Batch => "batch",
            Workload::FindMissing => "find-missing",
            Workload::ExecNoop => "exec-noop",
            Workload::ExecCached => "exec-cached",
            Workload::ExecThroughput => "exec-throughput",
            Workload::Stage => "stage",
            Workload::Soak => "soak",
            Workload::Tier => "tier",
            Workload::ChunkedUpdate => "chunked-update",
            Workload::All => "all",
        }
    }

    pub fn needs_execution(self) -> bool {
        matches!(
            self,
            Workload::ExecNoop
                | Workload::ExecCached
                | Workload::ExecThroughput
                | Workload::Stage
                | Workload::Soak
        )
    }
}
