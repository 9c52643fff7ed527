//! ByteStream workloads: `upload` writes one large pseudo-random blob (per parallel stream),
//! `download` reads it back, verifying the hash while it streams.

use std::time::Instant;

use bytes::Bytes;
use rexd::digest::DigestFunction;
use rexd::proto::bytestream::ReadRequest;
use rexd::proto::remote_execution as re;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data::{self, Rng, SALT_LEN, Salt};
use crate::json::Json;
use crate::report::{Figure, Outcome, mb_per_s};

/// Size of the blob written (and read) before the timed transfer.
const WARMUP_SIZE: usize = 8 * 1024 * 1024;
/// Chunks buffered between the receiving task and the hashing thread of one download.
const HASH_QUEUE: usize = 64;

/// Blobs the upload left on the server, for the download to read.
pub struct Uploaded {
    pub warmup: re::Digest,
    pub blobs: Vec<re::Digest>,
}

/// Writes `parallel` distinct blobs of `size` bytes at once, each on its own connection.
pub async fn upload(
    conn: &Conn,
    seed: u64,
    size: usize,
    parallel: usize,
) -> Result<(Outcome, Uploaded)> {
    // One body, generated once and shared by every stream; each blob is salt ‖ body.
    let body = tokio::task::spawn_blocking(move || Rng::new(seed, "upload").bytes(size - SALT_LEN))
        .await?;
    let salts: Vec<Salt> = (0..=parallel).map(|_| data::fresh_salt()).collect();
    let warmup_body = body.slice(..body.len().min(WARMUP_SIZE - SALT_LEN));
    let (warmup, blobs) = {
        let (body, warmup_body, salts) = (body.clone(), warmup_body.clone(), salts.clone());
        tokio::task::spawn_blocking(move || {
            let warmup = salted_digest(&salts[0], &warmup_body);
            let blobs: Vec<re::Digest> =
                salts[1..].iter().map(|s| salted_digest(s, &body)).collect();
            (warmup, blobs)
        })
        .await?
    };

    let prefix = conn.resource_prefix();
    let warm_client = Conn::bytestream_on(conn.new_connection().await?);
    conn::write_blob(warm_client, &prefix, &salts[0], warmup_body, &warmup).await?;

    let mut clients = Vec::new();
    for _ in 0..parallel {
        clients.push(Conn::bytestream_on(conn.new_connection().await?));
    }
    let started = Instant::now();
    let writes = clients
        .into_iter()
        .zip(&salts[1..])
        .zip(&blobs)
        .map(|((client, salt), d)| conn::write_blob(client, &prefix, salt, body.clone(), d));
    futures::future::try_join_all(writes).await?;
    let elapsed = started.elapsed();
    drop(body);

    let total = (size * parallel) as u64;
    let rate = mb_per_s(total, elapsed);
    let outcome = Outcome {
        figures: vec![Figure {
            key: "upload_mb_per_s",
            value: Some(rate),
        }],
        headline: format!("{rate:.1} MB/s"),
        detail: format!(
            "{} x {} in {:.3} s, {WRITE_MIB} MiB messages",
            parallel,
            mib(size),
            elapsed.as_secs_f64(),
            WRITE_MIB = conn::WRITE_CHUNK / (1024 * 1024)
        ),
        params: Json::obj()
            .with("bytes", size)
            .with("parallel", parallel)
            .with("seconds", elapsed.as_secs_f64()),
    };
    Ok((outcome, Uploaded { warmup, blobs }))
}

/// Reads every uploaded blob at once, each on its own connection, checking its hash.
pub async fn download(conn: &Conn, uploaded: &Uploaded) -> Result<Outcome> {
    let prefix = conn.resource_prefix();
    let warm_client = Conn::bytestream_on(conn.new_connection().await?);
    read_verified(warm_client, &prefix, &uploaded.warmup).await?;

    let mut clients = Vec::new();
    for _ in &uploaded.blobs {
        clients.push(Conn::bytestream_on(conn.new_connection().await?));
    }
    let started = Instant::now();
    let reads = clients
        .into_iter()
        .zip(&uploaded.blobs)
        .map(|(client, d)| read_verified(client, &prefix, d));
    futures::future::try_join_all(reads).await?;
    let elapsed = started.elapsed();

    let size = uploaded.blobs.first().map_or(0, |d| d.size_bytes as usize);
    let total = uploaded.blobs.iter().map(|d| d.size_bytes as u64).sum();
    let rate = mb_per_s(total, elapsed);
    Ok(Outcome {
        figures: vec![Figure {
            key: "download_mb_per_s",
            value: Some(rate),
        }],
        headline: format!("{rate:.1} MB/s"),
        detail: format!(
            "{} x {} in {:.3} s, SHA-256 verified",
            uploaded.blobs.len(),
            mib(size),
            elapsed.as_secs_f64()
        ),
        params: Json::obj()
            .with("bytes", size)
            .with("parallel", uploaded.blobs.len())
            .with("seconds", elapsed.as_secs_f64()),
    })
}

/// Reads the blob `d` to its end; a separate thread hashes the chunks as they arrive, so
/// verification overlaps the transfer instead of following it.
async fn read_verified(
    mut client: rexd::proto::bytestream::byte_stream_client::ByteStreamClient<
        tonic::transport::Channel,
    >,
    prefix: &str,
    d: &re::Digest,
) -> Result<()> {
    let what = format!("ByteStream.Read of {}/{}", d.hash, d.size_bytes);
    let mut stream = client
        .read(ReadRequest {
            resource_name: format!("{prefix}blobs/{}/{}", d.hash, d.size_bytes),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .into_inner();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
    let expected_size = d.size_bytes as u64;
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = DigestFunction::Sha256.hasher(expected_size);
        let mut size = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        hasher.finish(size).to_proto()
    });
    while let Some(message) = stream.message().await.map_err(|e| format!("{what}: {e}"))? {
        if tx.send(message.data).await.is_err() {
            break;
        }
    }
    drop(tx);
    let got = hasher.await?;
    if &got != d {
        return Err(format!(
            "{what}: received {} bytes hashing to {}",
            got.size_bytes, got.hash
        )
        .into());
    }
    Ok(())
}

fn salted_digest(salt: &Salt, body: &[u8]) -> re::Digest {
    let mut hasher = DigestFunction::Sha256.hasher((SALT_LEN + body.len()) as u64);
    hasher.update(salt);
    hasher.update(body);
    hasher.finish((SALT_LEN + body.len()) as u64).to_proto()
}

fn mib(bytes: usize) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 && mib.fract() == 0.0 {
        format!("{mib:.0} MiB")
    } else {
        format!("{bytes} B")
    }
}
