//! Helpers for end-to-end tests that drive a real Bazel (Debian's
//! `bazel-bootstrap`, Bazel 4.2.3) against rexd, fully offline.
//!
//! The fixture workspace lives in `tests/fixtures/bazel_ws`; every
//! [`Workspace`] is a fresh copy of it in a temp dir. All Bazel servers of one
//! `cargo test` run share one `--output_user_root` (under
//! `CARGO_TARGET_TMPDIR`), while each workspace gets its own output base
//! (Bazel derives it from the workspace path).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::fs::copy_tree;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The Bazel launcher installed by `apt-get install -y bazel-bootstrap`.
pub const BAZEL: &str = "/usr/bin/bazel";

/// Shared by every Bazel invocation of a test run, so Bazel's one-time setup
/// is reused across tests and test binaries.
pub const OUTPUT_USER_ROOT: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/bazel-root");

/// The fixture workspace copied by [`Workspace::new`].
pub const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bazel_ws");

/// A single Bazel command is killed after this long (the Bazel server itself
/// exits on its own thanks to `--max_idle_secs`).
pub const BAZEL_TIMEOUT: Duration = Duration::from_secs(600);

/// Startup options put before the command. Never `--nosystem_rc`: Debian's
/// `/etc/bazel/bazelrc` sets `--install_base=/usr/share/bazel`.
fn startup_options() -> Vec<String> {
    vec![
        "--nohome_rc".into(),
        "--noworkspace_rc".into(),
        format!("--output_user_root={OUTPUT_USER_ROOT}"),
        // The server exits by itself shortly after the test, even if the
        // test process is killed before `Workspace::drop` runs.
        "--max_idle_secs=60".into(),
    ]
}

/// Flags for `build`/`test` that keep Bazel offline, hermetic and its output
/// parseable.
pub const OFFLINE_FLAGS: &[&str] = &[
    // Plain line-oriented output: no ANSI colours, no cursor control.
    "--color=no",
    "--curses=no",
    // Debian's system bazelrc turns on --sandbox_debug, which floods the log
    // with linux-sandbox traces.
    "--nosandbox_debug",
    // Fixed PATH=/bin:/usr/bin:/usr/local/bin and no LD_LIBRARY_PATH/TMPDIR
    // from the test's environment: action keys (and so cache hits) do not
    // depend on who runs the test.
    "--incompatible_strict_action_env",
    // Any attempt to download an external repository (e.g. a missing
    // stand-in) fails at once with a clear error instead of a DNS timeout.
    "--experimental_repository_disable_download",
    // Show the command line of a failed action, and the log of a failed test.
    "--verbose_failures",
    "--test_output=errors",
];

/// Flags for using rexd as a remote cache only: every action runs locally
/// and its result is uploaded; later builds get `remote cache hit`s.
pub fn remote_cache_flags(url: &str) -> Vec<String> {
    vec![
        format!("--remote_cache={url}"),
        // Both are the defaults in 4.2.3; spelled out because the tests
        // depend on them.
        "--remote_upload_local_results".into(),
        "--remote_accept_cached".into(),
        // Fail fast instead of backing off 5 times against a broken server.
        "--remote_retries=1".into(),
        "--remote_timeout=60s".into(),
    ]
}

/// Flags for remote execution on rexd, such that nothing may run locally.
pub fn remote_exec_flags(url: &str) -> Vec<String> {
    vec![
        // Also implies --remote_cache=url.
        format!("--remote_executor={url}"),
        // Every spawn (compiles, links, genrules, the test runner) must run
        // remotely: an action that cannot fails the build with "No usable
        // spawn strategy" instead of silently running locally. In 4.2.3
        // --genrule_strategy defaults to "" and test actions follow
        // --spawn_strategy, so no per-mnemonic --strategy is needed.
        "--spawn_strategy=remote".into(),
        // A remote failure is a build failure, never a silent local retry.
        "--remote_local_fallback=false".into(),
        // Download all outputs (the default) so the tests can check them.
        "--remote_download_outputs=all".into(),
        "--remote_retries=1".into(),
        "--remote_timeout=120s".into(),
    ]
}

/// Expected contents of the fixture's generated files, relative to
/// `bazel-bin`.
pub const EXPECTED_OUTPUTS: &[(&str, &str)] = &[
    ("gen/hello.txt", "hello from rexd\n"),
    ("gen/upper.txt", "HELLO FROM REXD\n"),
    (
        "gen/nested/deep/combined.txt",
        "line from a source file\nHELLO FROM REXD\n",
    ),
    // Produced by running the cc_binary //cc:mktable inside a genrule.
    ("gen/table.txt", "1 2\n2 5\n3 10\n4 17\n"),
];

/// Whether `/usr/bin/bazel` is installed.
pub fn bazel_available() -> bool {
    Path::new(BAZEL).is_file()
}

/// Returns true if Bazel is available. Otherwise panics when `CI` is set
/// (nothing may be skipped in CI), or prints a loud skip message and returns
/// false. Use as `if !bazel::bazel_or_skip() { return; }`.
pub fn bazel_or_skip() -> bool {
    if bazel_available() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{BAZEL} not found and CI is set: install it with `apt-get install -y bazel-bootstrap`"
        );
    }
    eprintln!();
    eprintln!("==============================================================");
    eprintln!("SKIPPED: bazel not installed (apt-get install -y bazel-bootstrap)");
    eprintln!("==============================================================");
    eprintln!();
    false
}

/// A fresh copy of the fixture workspace. Dropping it stops its Bazel server
/// and deletes its output base.
pub struct Workspace {
    dir: tempfile::TempDir,
    used: std::cell::Cell<bool>,
    /// The network namespace Bazel runs in, when not the test's own.
    pub netns: Option<String>,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix("rexd-bazel-ws-")
            .tempdir()
            .expect("create temp dir for bazel workspace");
        copy_tree(Path::new(FIXTURE_DIR), dir.path())
            .unwrap_or_else(|e| panic!("copy {FIXTURE_DIR} to {}: {e}", dir.path().display()));
        fs::create_dir_all(OUTPUT_USER_ROOT).expect("create bazel output_user_root");
        Workspace {
            dir,
            used: std::cell::Cell::new(false),
            netns: None,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<workspace>/bazel-bin` (the convenience symlink Bazel creates).
    pub fn bin_dir(&self) -> PathBuf {
        self.path().join("bazel-bin")
    }

    /// Reads a file under `bazel-bin`.
    pub fn read_output(&self, rel: &str) -> std::io::Result<String> {
        fs::read_to_string(self.bin_dir().join(rel))
    }

    /// Asserts every file of [`EXPECTED_OUTPUTS`] exists with the expected
    /// contents, and that the cc_binary is an executable that runs.
    pub fn assert_outputs(&self) {
        for (rel, expected) in EXPECTED_OUTPUTS {
            let got = self
                .read_output(rel)
                .unwrap_or_else(|e| panic!("read bazel-bin/{rel}: {e}"));
            assert_eq!(&got, expected, "contents of bazel-bin/{rel}");
        }
        let tool = self.bin_dir().join("cc/mktable");
        let out = Command::new(&tool)
            .arg("4")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
        assert!(out.status.success(), "{} failed: {:?}", tool.display(), out);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "1 2\n2 5\n3 10\n4 17\n"
        );
    }

    /// Asserts that `bazel clean` removed the outputs.
    pub fn assert_outputs_absent(&self) {
        for (rel, _) in EXPECTED_OUTPUTS {
            let p = self.bin_dir().join(rel);
            assert!(!p.exists(), "{} still exists after clean", p.display());
        }
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if !self.used.get() {
            return;
        }
        // `clean --expunge` deletes this workspace's output base (so the
        // shared output_user_root does not grow with every test) and stops
        // the server. Fall back to a plain shutdown.
        let expunged = run(
            self,
            &["clean", "--expunge", "--color=no", "--curses=no"],
            false,
        );
        if !expunged.success() {
            shutdown(self);
        }
    }
}

/// The result of one Bazel command.
#[derive(Debug)]
pub struct BazelRun {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub timed_out: bool,
    /// stdout and stderr, interleaved as Bazel wrote them.
    pub output: String,
    pub elapsed: Duration,
}

impl BazelRun {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.success(),
            "bazel {} failed ({}{}):\n{}",
            self.args.join(" "),
            self.status,
            if self.timed_out { ", timed out" } else { "" },
            self.output
        );
        self
    }

    /// Panics unless the command succeeded with every non-internal process a remote cache hit.
    pub fn assert_all_remote_cache_hits(&self) -> &Self {
        self.assert_success();
        let s = self.summary();
        assert!(s.remote_cache_hit() > 0, "no remote cache hits: {s:?}");
        assert_eq!(
            s.remote_cache_hit(),
            s.non_internal(),
            "every non-internal process must be a remote cache hit: {s:?}\n{}",
            self.output
        );
        self
    }

    /// The last `INFO: N processes: ...` line of the output, parsed.
    pub fn processes(&self) -> Option<ProcessSummary> {
        self.output.lines().rev().find_map(ProcessSummary::parse)
    }

    /// Like [`BazelRun::processes`], panicking with the output if there is no
    /// summary line.
    pub fn summary(&self) -> ProcessSummary {
        self.processes().unwrap_or_else(|| {
            panic!(
                "no `INFO: N processes` line in the output of bazel {}:\n{}",
                self.args.join(" "),
                self.output
            )
        })
    }
}

/// The build summary line, e.g.
/// `INFO: 24 processes: 12 internal, 12 linux-sandbox.` or
/// `INFO: 7 processes: 3 remote cache hit, 4 internal.`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessSummary {
    pub total: u64,
    /// Count per kind (`internal`, `remote`, `remote cache hit`, `local`,
    /// `linux-sandbox`, `processwrapper-sandbox`, `worker`, ...).
    pub kinds: BTreeMap<String, u64>,
}

impl ProcessSummary {
    /// Parses one line; `None` if it is not a process summary line.
    pub fn parse(line: &str) -> Option<ProcessSummary> {
        let rest = line.trim().strip_prefix("INFO: ")?;
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        let (head, tail) = match rest.split_once(':') {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        let (n, word) = head.trim().split_once(' ')?;
        if word != "processes" && word != "process" {
            return None;
        }
        let total = n.parse().ok()?;
        let mut kinds = BTreeMap::new();
        if let Some(tail) = tail {
            for part in tail.split(',') {
                let (n, kind) = part.trim().split_once(' ')?;
                *kinds.entry(kind.trim().to_string()).or_insert(0) += n.parse::<u64>().ok()?;
            }
        }
        Some(ProcessSummary { total, kinds })
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.kinds.get(kind).copied().unwrap_or(0)
    }

    pub fn internal(&self) -> u64 {
        self.count("internal")
    }

    pub fn remote(&self) -> u64 {
        self.count("remote")
    }

    pub fn remote_cache_hit(&self) -> u64 {
        self.count("remote cache hit")
    }

    /// Processes that actually ran on this machine, whatever the strategy
    /// (`local`, `linux-sandbox`, `processwrapper-sandbox`, `worker`, ...).
    pub fn local(&self) -> u64 {
        self.kinds
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "internal" | "remote" | "remote cache hit"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Everything Bazel did not do internally (file writes, symlinks, ...).
    pub fn non_internal(&self) -> u64 {
        self.total - self.internal()
    }
}

/// Runs `/usr/bin/bazel <startup options> <args...>` in the workspace and
/// returns its exit status and combined output. The output is also printed
/// to stderr (captured by the test harness, shown on failure).
pub fn bazel(ws: &Workspace, args: &[&str]) -> BazelRun {
    run(ws, args, true)
}

/// Like [`bazel`], taking owned flags, e.g.
/// `bazel_with(&ws, &["build", "//..."], &remote_cache_flags(&url))`: the
/// command is `args[0]`, then [`OFFLINE_FLAGS`], then `flags`, then the rest
/// of `args`.
pub fn bazel_with(ws: &Workspace, args: &[&str], flags: &[String]) -> BazelRun {
    let (cmd, rest) = args.split_first().expect("bazel command");
    let mut all: Vec<&str> = vec![cmd];
    all.extend_from_slice(OFFLINE_FLAGS);
    all.extend(flags.iter().map(String::as_str));
    all.extend_from_slice(rest);
    bazel(ws, &all)
}

/// `bazel shutdown`, ignoring errors.
pub fn shutdown(ws: &Workspace) {
    let _ = run(ws, &["shutdown"], false);
}

fn run(ws: &Workspace, args: &[&str], log: bool) -> BazelRun {
    ws.used.set(true);
    let mut full: Vec<String> = startup_options();
    full.extend(args.iter().map(|s| s.to_string()));

    // One file for both streams keeps Bazel's own interleaving.
    let mut out = tempfile::tempfile().expect("temp file for bazel output");
    let start = Instant::now();
    let mut command = match &ws.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, BAZEL]);
            c
        }
        None => Command::new(BAZEL),
    };
    let mut child = command
        .args(&full)
        .current_dir(ws.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("dup output file")))
        .stderr(Stdio::from(out.try_clone().expect("dup output file")))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BAZEL}: {e}"));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bazel") {
            break status;
        }
        if start.elapsed() > BAZEL_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed bazel");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let mut bytes = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("rewind bazel output");
    out.read_to_end(&mut bytes).expect("read bazel output");
    let output = String::from_utf8_lossy(&bytes).into_owned();
    if log {
        eprintln!(
            "---- bazel {} ({}, {:.1}s) in {}\n{}---- end of bazel output",
            args.join(" "),
            status,
            elapsed.as_secs_f64(),
            ws.path().display(),
            output
        );
    }
    BazelRun {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        timed_out,
        output,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as printed by Bazel 4.2.3 (Debian bazel-bootstrap).
    #[test]
    fn parses_local_build_summary() {
        let s =
            ProcessSummary::parse("INFO: 24 processes: 12 internal, 12 linux-sandbox.").unwrap();
        assert_eq!(s.total, 24);
        assert_eq!(s.internal(), 12);
        assert_eq!(s.count("linux-sandbox"), 12);
        assert_eq!(s.local(), 12);
        assert_eq!(s.remote(), 0);
        assert_eq!(s.remote_cache_hit(), 0);
        assert_eq!(s.non_internal(), 12);
    }

    #[test]
    fn parses_single_kind_and_singular() {
        let s = ProcessSummary::parse("INFO: 2 processes: 2 linux-sandbox.").unwrap();
        assert_eq!((s.total, s.local(), s.internal()), (2, 2, 0));
        let s = ProcessSummary::parse("INFO: 1 process: 1 internal.").unwrap();
        assert_eq!((s.total, s.internal(), s.non_internal()), (1, 1, 0));
        let s = ProcessSummary::parse("INFO: 0 processes.").unwrap();
        assert_eq!(s.total, 0);
        assert!(s.kinds.is_empty());
    }

    #[test]
    fn parses_remote_kinds() {
        let s =
            ProcessSummary::parse("INFO: 24 processes: 12 remote cache hit, 12 internal.").unwrap();
        assert_eq!(
            (s.total, s.remote_cache_hit(), s.internal(), s.local()),
            (24, 12, 12, 0)
        );
        let s = ProcessSummary::parse("INFO: 24 processes: 12 internal, 12 remote.").unwrap();
        assert_eq!((s.remote(), s.internal(), s.local()), (12, 12, 0));
        let s = ProcessSummary::parse(
            "INFO: 9 processes: 2 remote cache hit, 3 internal, 1 processwrapper-sandbox, 3 remote.",
        )
        .unwrap();
        assert_eq!(s.local(), 1);
        assert_eq!(s.kinds.values().sum::<u64>(), s.total);
    }

    #[test]
    fn ignores_other_lines_and_finds_last_summary() {
        assert_eq!(
            ProcessSummary::parse("INFO: Elapsed time: 4.933s, Critical Path: 0.43s"),
            None
        );
        assert_eq!(
            ProcessSummary::parse("INFO: Build completed successfully, 24 total actions"),
            None
        );
        assert_eq!(
            ProcessSummary::parse("INFO: Found 6 targets and 1 test target..."),
            None
        );
        assert_eq!(ProcessSummary::parse("Loading: 0 packages loaded"), None);
        let run = BazelRun {
            args: vec![],
            status: std::process::Command::new("true").status().unwrap(),
            timed_out: false,
            output: "INFO: 3 processes: 3 internal.\nINFO: Elapsed time: 1.4s\n\
                     INFO: 24 processes: 12 internal, 12 linux-sandbox.\n\
                     INFO: Build completed successfully, 24 total actions\n"
                .into(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.summary().total, 24);
    }
}
