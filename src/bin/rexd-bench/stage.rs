//! The `stage` workload: an action over a wide input tree (many small files in many
//! directories), so its round trip is dominated by how the server materialises inputs.

use bytes::Bytes;
use prost::Message;
use rexd::proto::remote_execution as re;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data::{self, Rng};
use crate::exec::{self, ExecEnv};
use crate::json::Json;
use crate::report::{Figure, Latencies, Outcome};
use crate::workers;

/// Size range of the input files: small, as in source trees.
const FILE_SIZE: (usize, usize) = (32, 64);

/// An input root of `files` distinct small files spread over `dirs` directories.
struct Tree {
    root: re::Digest,
    /// Every file and Directory blob.
    blobs: Vec<Bytes>,
}

fn build_tree(seed: u64, files: usize, dirs: usize) -> Tree {
    let mut rng = Rng::new(seed, "stage");
    let salt = data::fresh_salt();
    let mut blobs = Vec::with_capacity(files + dirs + 1);
    let file_width = digits(files);
    let dir_width = digits(dirs);
    let mut root = re::Directory::default();
    for d in 0..dirs {
        let mut dir = re::Directory::default();
        // File i lives in directory i % dirs; names are zero-padded, so already sorted.
        for i in (d..files).step_by(dirs) {
            let len = rng.range(FILE_SIZE.0, FILE_SIZE.1);
            let blob = rng.salted(&salt, len);
            dir.files.push(re::FileNode {
                name: format!("f{i:0file_width$}"),
                digest: Some(conn::digest(&blob)),
                ..Default::default()
            });
            blobs.push(blob);
        }
        let blob = Bytes::from(dir.encode_to_vec());
        root.directories.push(re::DirectoryNode {
            name: format!("d{d:0dir_width$}"),
            digest: Some(conn::digest(&blob)),
        });
        blobs.push(blob);
    }
    let blob = Bytes::from(root.encode_to_vec());
    let root = conn::digest(&blob);
    blobs.push(blob);
    Tree { root, blobs }
}

fn digits(n: usize) -> usize {
    n.saturating_sub(1).max(1).ilog10() as usize + 1
}

/// Runs `/bin/true` over the tree `runs` times (after warm-up), each a new action.
pub async fn stage(
    conn: &Conn,
    env: &ExecEnv,
    seed: u64,
    files: usize,
    dirs: usize,
    runs: usize,
) -> Result<Outcome> {
    let dirs = dirs.max(1);
    let tree = tokio::task::spawn_blocking(move || build_tree(seed, files, dirs)).await?;
    conn.upload(&tree.blobs).await?;
    let salt = data::salt_hex(&data::fresh_salt());
    let warmup = env.warmup.min(1);
    let actions: Vec<exec::Action> = (0..warmup + runs)
        .map(|i| exec::true_action(env, format!("{salt}-stage-{i}"), &tree.root))
        .collect();
    exec::upload_actions(conn, &actions).await?;

    let client = conn.execution();
    let mut round_trips = Vec::new();
    let mut staging = Vec::new();
    // The worker report covers the warm-up too: its run is the one that fetches the tree.
    let mut tally = workers::Tally::default();
    let before = env.scrape_workers().await?;
    for (i, action) in actions.iter().enumerate() {
        let (response, elapsed) =
            exec::execute(client.clone(), &conn.instance, &action.digest, env.timeout).await?;
        tally.add(&response);
        if i < warmup {
            continue;
        }
        round_trips.push(elapsed);
        let metadata = response.result.and_then(|r| r.execution_metadata);
        if let Some(ms) = metadata.and_then(|m| {
            exec::span(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            )
        }) {
            staging.push(ms);
        }
    }
    let after = env.scrape_workers().await?;
    let mut params = Json::obj()
        .with("files", files)
        .with("dirs", dirs)
        .with("runs", runs)
        .with("warmup", warmup);
    let spread = env.worker_report(&tally, before, after, &mut params);
    let round_trip = Latencies::new(&round_trips).median();
    // Only a figure when every timed run reported it.
    let server = (staging.len() == runs && runs > 0).then(|| Latencies::from_ms(staging).median());
    let server_text = server.map_or("not exposed".to_string(), |ms| format!("{ms:.1} ms"));
    Ok(Outcome {
        figures: vec![
            Figure {
                key: "stage_round_trip_ms",
                value: Some(round_trip),
            },
            Figure {
                key: "stage_server_ms",
                value: server,
            },
        ],
        headline: format!("{round_trip:.1} ms (server staging {server_text})"),
        detail: format!(
            "{files} files in {dirs} directories; median of {runs} runs after {warmup} warm-up; \
             staging = input_fetch_completed - input_fetch_start{spread}"
        ),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_every_file_once_and_sorted_names() {
        let tree = build_tree(1, 25, 4);
        // 25 files, 4 directories, 1 root.
        assert_eq!(tree.blobs.len(), 30);
        let root = re::Directory::decode(tree.blobs.last().unwrap().clone()).unwrap();
        let names: Vec<&str> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["d0", "d1", "d2", "d3"]);
        let first = re::Directory::decode(tree.blobs[7].clone()).unwrap();
        let names: Vec<&str> = first.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["f00", "f04", "f08", "f12", "f16", "f20", "f24"]);
    }

    #[test]
    fn widths() {
        assert_eq!(
            (digits(1), digits(10), digits(11), digits(10_000)),
            (1, 1, 2, 4)
        );
    }
}
