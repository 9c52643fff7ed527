//! The cost of starting an action's process must not grow with the server's memory. This
//! measures it, by hand, in a release build:
//!
//! ```sh
//! cargo test --release --test spawn_cost -- --ignored --nocapture
//! ```
//!
//! It times rexd's spawn path and, for comparison, a `fork()`-based spawn (what
//! `std::process::Command` does whenever a pre-exec step is set, as rexd did before), each
//! with this process holding 12 MiB and then 200 MiB of touched heap. A figure, not a
//! timed assertion: the printed table goes into BENCHMARKS.md.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use rexd::execution::spawn;

const RUNS: usize = 300;

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

/// Heap of `mib` MiB with every page touched, so it is resident.
fn resident(mib: usize) -> Vec<u8> {
    let mut heap = vec![0u8; mib * 1024 * 1024];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    heap
}

async fn rexd_spawn_ms(dir: &std::path::Path) -> f64 {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let spec = spawn::Spec {
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            cwd: dir.to_path_buf(),
            stdout: std::fs::File::create(dir.join("out")).unwrap(),
            stderr: std::fs::File::create(dir.join("err")).unwrap(),
            extra_fds: vec![],
            credentials: None,
            max_processes: None,
            max_memory: None,
            max_file_size: 1 << 30,
        };
        let prepared = spec.prepare().unwrap();
        let started = Instant::now();
        let mut child = spawn::spawn(prepared).await.unwrap();
        samples.push(started.elapsed());
        assert!(child.wait().await.unwrap().success());
    }
    median(samples)
}

fn fork_spawn_ms() -> f64 {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: an empty pre-exec hook; it only forces std onto its fork() path.
        unsafe { cmd.pre_exec(|| Ok(())) };
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        samples.push(started.elapsed());
        assert!(child.wait().unwrap().success());
    }
    median(samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn spawn_cost_does_not_grow_with_resident_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Warm up: the spawner thread, the page cache, the dynamic loader's caches.
    rexd_spawn_ms(dir.path()).await;
    fork_spawn_ms();
    println!("resident heap | rexd spawn (clone VM|VFORK) | fork()-based spawn");
    for mib in [12, 200, 12, 200] {
        let heap = resident(mib);
        let ours = rexd_spawn_ms(dir.path()).await;
        let forked = fork_spawn_ms();
        println!("{mib:>9} MiB | {ours:>22.3} ms | {forked:>15.3} ms");
        drop(heap);
    }
}
