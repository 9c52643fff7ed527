//! Helpers for end-to-end tests that drive a real BuildStream 1.6 (Debian's
//! `buildstream` package, `/usr/bin/bst`) against rexd as its artifact cache.
//!
//! BuildStream 1.6 has no remote execution: it builds locally in bubblewrap
//! and pushes and pulls artifacts, resolving artifact names through the
//! Remote Asset API (FetchDirectory/PushDirectory with
//! `urn:fdc:buildstream.build:2020:v1:{ref}` URIs) and moving content through
//! the CAS. The fixture project lives in `tests/fixtures/bst1_project`; every
//! [`Project1`] is a fresh copy of it, with the sysroot made from the static
//! busybox as in [`super::bst`]. BuildStream 2 (`/opt/bst2`) may come first on
//! PATH, so `/usr/bin/bst` is always called by its full path.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::bst::{BUSYBOX, ProjectDir};

/// Debian's BuildStream 1.6.
pub const BST1: &str = "/usr/bin/bst";

/// The fixture project copied by [`Project1::new`].
pub const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bst1_project");

/// One bst command (and everything it started) is killed after this long.
pub const BST1_TIMEOUT: Duration = Duration::from_secs(300);

/// The URI prefix BuildStream 1.6 names its artifacts with in the Remote Asset API.
pub const ARTIFACT_URN_PREFIX: &str = "urn:fdc:buildstream.build:2020:v1:";

/// `Ok` if `/usr/bin/bst --version` reports 1.x, else why not.
pub fn find_bst1() -> Result<(), String> {
    let out = Command::new(BST1)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{BST1}: {e} (apt-get install -y buildstream)"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && version.starts_with("1.") {
        Ok(())
    } else {
        Err(format!(
            "{BST1} is not BuildStream 1.x (--version says {version:?}); apt-get install -y buildstream"
        ))
    }
}

/// True if BuildStream 1.6 and the static busybox are installed. Otherwise
/// panics when `CI` is set (nothing may be skipped in CI), or prints a loud
/// skip message and returns false.
pub fn bst1_or_skip() -> bool {
    let why = match find_bst1() {
        Ok(()) if Path::new(BUSYBOX).is_file() => return true,
        Ok(()) => format!("{BUSYBOX} not found (apt-get install -y busybox-static)"),
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
    false
}

/// A fresh copy of the fixture project plus the directories of its current
/// user configuration, all in one temp dir (`project/`, `state-N/`).
pub struct Project1 {
    dirs: ProjectDir,
    /// `artifacts: url:` (http://HOST:PORT), pushed to.
    cache_url: String,
}

impl Project1 {
    /// A fresh project whose artifact cache is `cache_url` (with push), and an
    /// empty local cache.
    pub fn new(cache_url: &str) -> Project1 {
        let p = Project1 {
            dirs: ProjectDir::new("rexd-bst1-", FIXTURE_DIR),
            cache_url: cache_url.to_string(),
        };
        p.write_user_config();
        p
    }

    /// Switches to new, empty local artifact, source and build directories.
    pub fn fresh_cache(&mut self) {
        self.dirs.next_generation();
        self.write_user_config();
    }

    pub fn path(&self) -> PathBuf {
        self.dirs.path()
    }

    /// A path in the temp dir that does not exist yet (e.g. for `checkout`).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dirs.scratch(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dirs.state_dir()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dirs.config_path()
    }

    fn write_user_config(&self) {
        let state = self.state_dir();
        for sub in [
            "sources",
            "build",
            "artifacts",
            "logs",
            "xdg-config",
            "xdg-cache",
            "xdg-data",
        ] {
            fs::create_dir_all(state.join(sub)).unwrap();
        }
        // BuildStream 1.6 user configuration keys (buildstream/data/userconfig.yaml and
        // _artifactcache/artifactcache.py: url, push, server-cert, client-key, client-cert).
        let conf = format!(
            "# Written by tests/common/bst1.rs: everything in the test's temp dir.\n\
             sourcedir: {state}/sources\n\
             builddir: {state}/build\n\
             artifactdir: {state}/artifacts\n\
             logdir: {state}/logs\n\
             scheduler:\n\
             \x20 fetchers: 1\n\
             \x20 builders: 1\n\
             \x20 pushers: 1\n\
             \x20 network-retries: 0\n\
             \x20 on-error: quit\n\
             logging:\n\
             \x20 verbose: True\n\
             \x20 error-lines: 200\n\
             \x20 message-lines: 200\n\
             artifacts:\n\
             \x20 url: {url}\n\
             \x20 push: true\n",
            state = state.display(),
            url = self.cache_url,
        );
        fs::write(self.config_path(), conf).expect("write the BuildStream 1.6 user config");
    }

    /// Runs `/usr/bin/bst --no-interactive --no-colors -c <config> -C
    /// <project> <args...>` in its own process group (killed after
    /// [`BST1_TIMEOUT`]) and returns its status and combined output, which
    /// is also printed to stderr.
    pub fn bst(&self, args: &[&str]) -> Bst1Run {
        let state = self.state_dir();
        let config = self.config_path().display().to_string();
        let project = self.path().display().to_string();
        let mut full = vec![
            "--no-interactive",
            "--no-colors",
            "-c",
            &config,
            "-C",
            &project,
        ];
        full.extend_from_slice(args);

        let mut out = tempfile::tempfile().expect("temp file for bst output");
        let start = Instant::now();
        let mut cmd = Command::new(BST1);
        cmd.args(&full)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out.try_clone().unwrap()))
            // Nothing of the invoking user's BuildStream setup may leak in.
            .env("XDG_CONFIG_HOME", state.join("xdg-config"))
            .env("XDG_CACHE_HOME", state.join("xdg-cache"))
            .env("XDG_DATA_HOME", state.join("xdg-data"))
            // bst 1.6 refuses to start unless its cache volume has 2 GB free on
            // top of the quota; CI machines can have less. The variable only
            // drops that headroom (and a completion fast-exit path).
            .env("BST_TEST_SUITE", "1");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BST1}: {e}"));
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bst") {
                break status;
            }
            if start.elapsed() > BST1_TIMEOUT {
                timed_out = true;
                // The group is killed before bst is reaped, so its id is still ours.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                break child.wait().expect("wait for killed bst");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut bytes = Vec::new();
        out.seek(SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut bytes).unwrap();
        let output = String::from_utf8_lossy(&bytes).into_owned();
        eprintln!(
            "---- bst {} ({status}{}, {:.1}s)\n{output}---- end of bst output",
            args.join(" "),
            if timed_out { ", TIMED OUT" } else { "" },
            start.elapsed().as_secs_f64(),
        );
        Bst1Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            status,
            timed_out,
            output,
        }
    }
}

/// The result of one bst command.
#[derive(Debug)]
pub struct Bst1Run {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub timed_out: bool,
    /// stdout and stderr, interleaved as bst wrote them.
    pub output: String,
}

impl Bst1Run {
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            !self.timed_out && self.status.success(),
            "bst {} failed ({}{}):\n{}",
            self.args.join(" "),
            self.status,
            if self.timed_out { ", timed out" } else { "" },
            self.output
        );
        self
    }

    /// Lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.output.lines().filter(|l| l.contains(needle)).count()
    }
}

/// Every file, directory and symlink under `root`, with file contents and link targets,
/// sorted by path: two checkouts are equal when these are.
pub fn tree_listing(root: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let ty = entry.file_type().unwrap();
            if ty.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", fs::read_link(&path).unwrap().display()),
                ));
            } else if ty.is_dir() {
                out.push((format!("{rel}/"), String::new()));
                walk(root, &path, out);
            } else {
                out.push((
                    rel,
                    String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
