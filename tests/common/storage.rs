//! Helpers of the storage tests (`tests/storage_*.rs`): blobs in and out over the wire,
//! a look at the data directory on disk, and servers with a tight disk budget.

use std::path::{Path, PathBuf};

use super::{TestServer, digest, pseudo_random, upload_path};
use bytes::Bytes;
use bytesize::ByteSize;
use rexd::config::Config;
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::bytestream::{ReadRequest, WriteRequest, WriteResponse};
use rexd::proto::remote_execution as re;
use tonic::{Code, Status};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

pub fn sha(data: &[u8]) -> Digest {
    Digest::of(DigestFunction::Sha256, data)
}

/// Whether the index holds `data`, without counting the question as a use (FindMissingBlobs
/// and reads would move the blob in the LRU order and pin it).
pub fn indexed(server: &TestServer, data: &[u8]) -> bool {
    server.ctx.cas.index().is_verified(&sha(data)).is_some()
}

/// Every regular file under `dir`, with its size.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len()));
            }
        }
    }
    out
}

/// Sum of the sizes of the blob files under `{data_dir}/cas`.
pub fn cas_disk_bytes(data_dir: &Path) -> u64 {
    files_under(&data_dir.join("cas")).iter().map(|f| f.1).sum()
}

/// Names of whatever is in `{data_dir}/tmp`.
pub fn tmp_entries(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that every file under `{data_dir}/cas` is a complete blob: its content hashes to
/// the digest its name gives.
pub fn assert_cas_files_are_complete_blobs(data_dir: &Path) {
    for (path, _) in files_under(&data_dir.join("cas")) {
        let function_name = path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .unwrap()
            .to_str()
            .unwrap();
        let function = DigestFunction::from_name(function_name).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (hash, size) = name
            .split_once('-')
            .expect("blob file names are {hash}-{size}");
        let expected = Digest::parse(function, hash, size.parse().unwrap()).unwrap();
        let actual = rexd::storage::disk::hash_file(&path, function).unwrap();
        assert_eq!(
            actual,
            expected,
            "{} is not the blob it is named after",
            path.display()
        );
    }
}

/// Uploads `data` with one ByteStream Write in 32 KiB messages.
pub async fn bs_write(server: &TestServer, data: &[u8]) -> Result<WriteResponse, Status> {
    let name = upload_path(data);
    let mut requests: Vec<WriteRequest> = data
        .chunks(32 * KIB)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 { name.clone() } else { String::new() },
            write_offset: (i * 32 * KIB) as i64,
            finish_write: false,
            data: Bytes::copy_from_slice(piece),
        })
        .collect();
    if requests.is_empty() {
        requests.push(WriteRequest {
            resource_name: name,
            ..Default::default()
        });
    }
    requests.last_mut().unwrap().finish_write = true;
    server
        .bytestream()
        .await
        .write(futures::stream::iter(requests))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads a blob with ByteStream: the bytes that arrived, and how the read ended.
pub async fn bs_read(server: &TestServer, d: &re::Digest) -> (Vec<u8>, Result<(), Status>) {
    bs_read_resource(server, format!("blobs/{}/{}", d.hash, d.size_bytes)).await
}

/// Reads a resource name with ByteStream, as [`bs_read`] does.
pub async fn bs_read_resource(
    server: &TestServer,
    resource_name: String,
) -> (Vec<u8>, Result<(), Status>) {
    let mut data = Vec::new();
    let request = ReadRequest {
        resource_name,
        read_offset: 0,
        read_limit: 0,
    };
    let mut stream = match server.bytestream().await.read(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (data, Err(status)),
    };
    loop {
        match stream.message().await {
            Ok(Some(msg)) => data.extend_from_slice(&msg.data),
            Ok(None) => return (data, Ok(())),
            Err(status) => return (data, Err(status)),
        }
    }
}

/// Reads one blob with BatchReadBlobs: its per-item code and data.
pub async fn batch_read(server: &TestServer, d: &re::Digest) -> (Code, Vec<u8>) {
    let response = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &response.responses[0];
    let code = Code::from(r.status.as_ref().map_or(0, |s| s.code));
    (code, r.data.to_vec())
}

/// Asserts that BatchReadBlobs serves exactly `data`.
pub async fn assert_readable(server: &TestServer, data: &[u8]) {
    let (code, got) = batch_read(server, &digest(data)).await;
    assert_eq!(code, Code::Ok, "reading {:?}", digest(data));
    assert!(
        got == data,
        "BatchReadBlobs served wrong bytes for {:?}",
        digest(data)
    );
}

/// The digests among `blobs` FindMissingBlobs reports missing.
pub async fn find_missing(server: &TestServer, blobs: &[&[u8]]) -> Vec<re::Digest> {
    server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: blobs.iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

/// A storage-only server: execution off, no minimum retention, and `edit` on top.
pub async fn start_store(edit: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.execution.enabled = false;
        c.storage.min_retention_secs = 0;
        edit(c);
    })
    .await
}

pub async fn restart_store(dir: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_in(dir, |c| {
        c.execution.enabled = false;
        c.storage.min_retention_secs = 0;
        edit(c);
    })
    .await
}

/// A budget where every 1000-byte write past `slots` blobs evicts exactly one blob.
pub fn exact_budget(c: &mut Config, slots: u64) {
    c.storage.max_size = ByteSize::b(slots * 1000 + 500);
    c.storage.low_water_percent = 100;
}

/// `count` distinct 1000-byte blobs.
pub fn thousand_byte_blobs(count: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| pseudo_random(1000, seed + i as u64))
        .collect()
}
