//! Long-lived sandboxes: a worker runs action after action in one bubblewrap sandbox, and
//! nothing one action leaves there (processes, files in /tmp, /dev/shm and /dev/mqueue,
//! System V IPC objects, changed permissions) reaches the next.

mod common;

use common::exec::sh;
use common::sandboxed::{output, processes_with, start_sandboxed};

/// The pid the shell of an action sees for itself; `nonce` keeps the action uncached.
async fn own_pid(server: &common::TestServer, nonce: &str) -> u32 {
    let (code, text) = output(server, &sh(format!("echo $$ # {nonce}"))).await;
    assert_eq!(code, 0, "{text}");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a pid: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_its_actions_in_one_sandbox() {
    let Some(server) = start_sandboxed(|c| c.execution.local_workers = Some(1)).await else {
        return;
    };
    let first = own_pid(&server, "first").await;
    let second = own_pid(&server, "second").await;
    assert!(
        second > first,
        "the second action ran in a new pid namespace: pid {first}, then {second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_every_action_gets_a_new_sandbox() {
    let Some(server) = start_sandboxed(|c| {
        c.execution.local_workers = Some(1);
        c.sandbox.reuse_sandboxes = false;
    })
    .await
    else {
        return;
    };
    let first = own_pid(&server, "first").await;
    let second = own_pid(&server, "second").await;
    assert_eq!(first, second, "both actions start a fresh pid namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_an_action_leaves_reaches_the_next() {
    let Some(server) = start_sandboxed(|c| c.execution.local_workers = Some(1)).await else {
        return;
    };
    let marker = format!("leftover-{}", std::process::id());
    let leave = format!(
        "echo mode=$(stat -c %a /tmp); setsid sh {marker}.sh </dev/null >/dev/null 2>&1 & \
         echo x > /tmp/{marker}; mkdir -p /tmp/{marker}-dir/sub; chmod 000 /tmp/{marker}-dir; \
         echo x > /dev/shm/{marker}; : > /dev/mqueue/{marker}; \
         ipcmk -M 4096 >/dev/null && ipcmk -S 1 >/dev/null && ipcmk -Q >/dev/null && \
         ls -A /tmp /dev/shm /dev/mqueue && ipcs && chmod 700 /tmp && echo left"
    );
    let leave = sh(leave).file(&format!("{marker}.sh"), b"sleep 1000\n");
    let (code, text) = output(&server, &leave).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&marker) && text.ends_with("left\n"), "{text}");
    // The action's answer comes only after its sandbox is emptied.
    assert!(
        processes_with(&marker).is_empty(),
        "a process of the first action outlived it: {:?}",
        processes_with(&marker)
    );

    let mode_before = text.lines().next().unwrap_or_default().to_string();
    let look = "echo mode=$(stat -c %a /tmp); ls -A /tmp /dev/shm /dev/mqueue; ipcs; \
                for p in /proc/[0-9]*; do cat $p/cmdline; echo; done"
        .to_string();
    let (code, text) = output(&server, &sh(look)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains(&marker),
        "the next action saw what the first left: {text}"
    );
    assert!(mode_before.starts_with("mode="), "{mode_before}");
    assert_eq!(
        text.lines().next(),
        Some(mode_before.as_str()),
        "/tmp's permissions were not restored: {text}"
    );
    for table in ["Shared Memory", "Semaphore", "Message"] {
        let after = text
            .split(table)
            .nth(1)
            .and_then(|rest| rest.lines().nth(2))
            .unwrap_or_default();
        assert!(
            !after.starts_with("0x"),
            "a System V {table} object survived: {text}"
        );
    }
}

/// Pids of the long-lived sandboxes' pid 1 running under `uid` on the host.
fn sandbox_inits_of(uid: u32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let owner = std::fs::metadata(e.path()).ok()?.uid();
            (owner == uid && cmdline.starts_with(b"/proc/self/fd/4\0sandbox-init")).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_died_between_actions_is_replaced() {
    let Some(server) = start_sandboxed(|c| c.execution.local_workers = Some(1)).await else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        eprintln!("SKIPPED: finding a worker's sandbox by its uid needs root");
        return;
    }
    let uid = server.ctx.settings.written.sandbox.run_as_uid_base;
    let first = own_pid(&server, "before").await;
    let inits = sandbox_inits_of(uid);
    assert_eq!(
        inits.len(),
        1,
        "one worker, one long-lived sandbox: {inits:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inits[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    common::exec::eventually("the sandbox to die", || sandbox_inits_of(uid).is_empty()).await;
    // The next action runs (in a sandbox of its own), and the one after in a new long-lived one.
    let second = own_pid(&server, "after").await;
    let third = own_pid(&server, "later").await;
    assert!(first > 0 && second > 0);
    assert_eq!(
        sandbox_inits_of(uid).len(),
        1,
        "a new long-lived sandbox took over"
    );
    assert!(third > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_cannot_reach_into_its_sandboxes_pid_1() {
    let Some(server) = start_sandboxed(|c| c.execution.local_workers = Some(1)).await else {
        return;
    };
    // Its descriptors (the next action's stdout among them) and memory are off limits.
    let probe = "cat /proc/1/cmdline | tr '\\0' ' '; echo; \
                 ls /proc/1/fd >/dev/null 2>&1 && echo fds-readable || echo fds-denied; \
                 head -c1 /proc/1/mem >/dev/null 2>&1 && echo mem-readable || echo mem-denied";
    let (code, text) = output(&server, &sh(probe)).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("sandbox-init"),
        "pid 1 is the sandbox's init: {text}"
    );
    assert!(
        text.contains("fds-denied") && text.contains("mem-denied"),
        "{text}"
    );
}
