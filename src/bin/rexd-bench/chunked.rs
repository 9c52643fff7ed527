//! `chunked-update`: what content-defined chunking (REAPI v2.12 SplitBlob and SpliceBlob)
//! saves a client that uploads a new version of a large blob with a small change in it.
//!
//! The first version is uploaded whole, then split by the server (SplitBlob), so its chunks
//! are in the CAS, as they are for a real client whose previous build output was split. The
//! second version differs in 1 MiB in the middle: the client cuts it with the server's
//! FastCDC 2020 parameters, uploads only the chunks FindMissingBlobs reports missing and asks
//! SpliceBlob to assemble the blob. The figures are the payload bytes and wall time of that
//! path against a full ByteStream upload of a blob of the same size. Only run when named.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, FastCDC, Normalization};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data::{self, Rng, SALT_LEN};
use crate::json::Json;
use crate::report::{Figure, Outcome, ms};

/// Bytes overwritten in the middle of the second version: a small edit to a large output,
/// such as one member of an archive rebuilt.
const CHANGE: usize = 1024 * 1024;
/// BatchUpdateBlobs requests in flight while the missing chunks go up.
const BATCH_CONCURRENCY: usize = 4;
/// Digests per FindMissingBlobs call, so a small advertised chunk size never makes one
/// request larger than a server takes.
const FIND_MISSING_MAX: usize = 10_000;

const SHA256: i32 = re::digest_function::Value::Sha256 as i32;
const FAST_CDC_2020: i32 = re::chunking_function::Value::FastCdc2020 as i32;

/// The FastCDC 2020 parameters the server advertises; the client must cut exactly as the
/// server does, or no chunk of the previous version is found again.
#[derive(Clone, Copy)]
struct Cdc {
    avg: u32,
    seed: u32,
}

impl Cdc {
    /// The chunks of `data` as the spec fixes them: min avg/4, max avg*4, normalization
    /// level 2, the seed XORed into the gear table. Slices of `data`, not copies.
    fn chunks(self, data: &Bytes) -> Vec<Bytes> {
        FastCDC::with_level_and_seed(
            data,
            self.avg / 4,
            self.avg,
            self.avg * 4,
            Normalization::Level2,
            u64::from(self.seed),
        )
        .map(|c| data.slice(c.offset..c.offset + c.length))
        .collect()
    }
}

/// Runs the workload on a blob of `size` bytes drawn from `seed`.
pub async fn chunked_update(conn: &Conn, seed: u64, size: usize) -> Result<Outcome> {
    if size < 2 * CHANGE {
        return Err(
            "--chunked-size must be at least 2 MiB (1 MiB is changed at the middle)".into(),
        );
    }
    let cdc = capabilities(conn, size).await?;
    // The salt goes into the generator's stream, not only in front of the blob: with the
    // salt alone in front, every chunk but the first would already be on the server from
    // an earlier run, and the second run would measure nothing.
    let salt = data::fresh_salt();
    let stream = format!("chunked-update/{}", data::salt_hex(&salt));

    let (original, digest, client_chunks) = {
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || {
            let blob = Rng::new(seed, &stream).bytes(size);
            let digest = conn::digest(&blob);
            let chunks: Vec<re::Digest> =
                cdc.chunks(&blob).iter().map(|c| conn::digest(c)).collect();
            (blob, digest, chunks)
        })
        .await?
    };

    // Baseline: the first version, whole.
    let started = Instant::now();
    write(conn, original.clone(), &digest).await?;
    let baseline = started.elapsed();

    // The server splits the first version, which stores its chunks.
    let started = Instant::now();
    let split = conn
        .cas()
        .split_blob(re::SplitBlobRequest {
            instance_name: conn.instance.clone(),
            blob_digest: Some(digest.clone()),
            digest_function: SHA256,
            chunking_function: FAST_CDC_2020,
        })
        .await
        .map_err(|e| format!("SplitBlob: {e}"))?
        .into_inner();
    let split_time = started.elapsed();
    check_split(&split, &client_chunks, cdc)?;

    // The second version: 1 MiB in the middle overwritten with other pseudo-random bytes.
    let (changed, changed_digest) = {
        let stream = format!("{stream}/change");
        tokio::task::spawn_blocking(move || {
            // In place when `original` is no longer shared; a copy otherwise.
            let mut blob = Vec::from(original);
            let mid = size / 2;
            Rng::new(seed, &stream).fill(&mut blob[mid..mid + CHANGE]);
            let blob = Bytes::from(blob);
            let digest = conn::digest(&blob);
            (blob, digest)
        })
        .await?
    };

    // The chunked path, timed from the cutting (a real client has to cut and hash too) to
    // SpliceBlob's answer.
    let started = Instant::now();
    let (chunks, chunk_digests) = {
        let blob = changed.clone();
        tokio::task::spawn_blocking(move || {
            let chunks = cdc.chunks(&blob);
            let digests: Vec<re::Digest> = chunks.iter().map(|c| conn::digest(c)).collect();
            (chunks, digests)
        })
        .await?
    };
    let cdc_time = started.elapsed();
    let missing = find_missing(conn, &chunk_digests).await?;
    let mut queued = HashSet::new();
    let to_send: Vec<Bytes> = chunks
        .iter()
        .zip(&chunk_digests)
        .filter(|(_, d)| missing.contains(&key(d)) && queued.insert(key(d)))
        .map(|(c, _)| c.clone())
        .collect();
    let sent: u64 = to_send.iter().map(|c| c.len() as u64).sum();
    let (requests, oversized) = conn.pack(&to_send);
    let (batch_requests, streamed) = (requests.len(), oversized.len());
    conn.send_batches(requests, BATCH_CONCURRENCY).await?;
    for chunk in oversized {
        let d = conn::digest(&chunk);
        write(conn, chunk, &d).await?;
    }
    let spliced = conn
        .cas()
        .splice_blob(re::SpliceBlobRequest {
            instance_name: conn.instance.clone(),
            blob_digest: Some(changed_digest.clone()),
            chunk_digests: chunk_digests.clone(),
            digest_function: SHA256,
            chunking_function: FAST_CDC_2020,
        })
        .await
        .map_err(|e| format!("SpliceBlob: {e}"))?
        .into_inner();
    let chunked_time = started.elapsed();
    if spliced.blob_digest.as_ref() != Some(&changed_digest) {
        return Err(format!(
            "SpliceBlob answered blob_digest {:?}; expected {}/{}",
            spliced.blob_digest, changed_digest.hash, changed_digest.size_bytes
        )
        .into());
    }
    let (total, uploaded) = (chunk_digests.len(), to_send.len());
    drop((chunks, to_send));

    // The full path for comparison: the second version under a fresh salt, so the server
    // holds neither it (SpliceBlob made that one) nor any chunk of it, and cannot answer
    // the Write early. Same size, same bytes but the first SALT_LEN.
    let (twin, twin_digest) = tokio::task::spawn_blocking(move || {
        let mut blob = Vec::from(changed);
        blob[..SALT_LEN].copy_from_slice(&data::fresh_salt());
        let blob = Bytes::from(blob);
        let digest = conn::digest(&blob);
        (blob, digest)
    })
    .await?;
    let started = Instant::now();
    write(conn, twin, &twin_digest).await?;
    let full_time = started.elapsed();

    let ratio = sent as f64 / size as f64;
    let seconds = |d: Duration| d.as_secs_f64();
    Ok(Outcome {
        figures: vec![
            figure("chunked_full_bytes", size as f64),
            figure("chunked_sent_bytes", sent as f64),
            figure("chunked_sent_ratio", ratio),
            figure("chunked_chunks", total as f64),
            figure("chunked_chunks_uploaded", uploaded as f64),
            figure("chunked_seconds", seconds(chunked_time)),
            figure("chunked_cdc_seconds", seconds(cdc_time)),
            figure("chunked_full_seconds", seconds(full_time)),
            figure("chunked_baseline_seconds", seconds(baseline)),
            figure("chunked_split_ms", ms(split_time)),
            figure("chunked_split_chunks", split.chunk_digests.len() as f64),
        ],
        headline: format!(
            "{:.2}% of the bytes, {:.3} s vs {:.3} s full",
            ratio * 100.0,
            seconds(chunked_time),
            seconds(full_time)
        ),
        detail: format!(
            "{} blob, 1 MiB changed at the middle; chunked: {} sent in {uploaded} of {total} \
             chunks ({batch_requests} batch request(s), {streamed} by ByteStream), cutting \
             and hashing {:.3} s of it; full re-upload {} (first version {:.3} s); SplitBlob \
             of the first version {:.1} ms, {} chunks equal to the client's (FastCDC 2020, \
             avg {} B, seed {})",
            mib(size as u64),
            mib(sent),
            seconds(cdc_time),
            mib(size as u64),
            seconds(baseline),
            ms(split_time),
            split.chunk_digests.len(),
            cdc.avg,
            cdc.seed
        ),
        params: Json::obj()
            .with("bytes", size)
            .with("changed_bytes", CHANGE)
            .with("avg_chunk_size_bytes", u64::from(cdc.avg))
            .with("cdc_seed", u64::from(cdc.seed))
            .with("batch_requests", batch_requests)
            .with("bytestream_chunks", streamed)
            .with("salt", data::salt_hex(&salt)),
    })
}

/// Reads Capabilities again (Conn keeps only what every workload needs) and insists on
/// SplitBlob, SpliceBlob and FastCDC 2020: without them there is nothing to measure.
async fn capabilities(conn: &Conn, size: usize) -> Result<Cdc> {
    let caps = CapabilitiesClient::new(conn.channel())
        .get_capabilities(re::GetCapabilitiesRequest {
            instance_name: conn.instance.clone(),
        })
        .await
        .map_err(|e| format!("GetCapabilities: {e}"))?
        .into_inner();
    let cache = caps.cache_capabilities.unwrap_or_default();
    let lacking: Vec<&str> = [
        ("split_blob_support", cache.split_blob_support),
        ("splice_blob_support", cache.splice_blob_support),
        ("fast_cdc_2020_params", cache.fast_cdc_2020_params.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| (!set).then_some(name))
    .collect();
    let Some(params) = cache.fast_cdc_2020_params.filter(|_| lacking.is_empty()) else {
        return Err(format!(
            "the server does not offer chunked uploads: its cache capabilities lack {} \
             (chunked-update needs SplitBlob, SpliceBlob and FastCDC 2020)",
            lacking.join(", ")
        )
        .into());
    };
    // fastcdc asserts on sizes outside these bounds; refuse them instead of panicking.
    let avg = u32::try_from(params.avg_chunk_size_bytes)
        .ok()
        .filter(|avg| (AVERAGE_MIN..=AVERAGE_MAX).contains(avg))
        .ok_or_else(|| {
            format!(
                "the server advertises avg_chunk_size_bytes {}, outside the {AVERAGE_MIN}-\
                 {AVERAGE_MAX} B FastCDC 2020 accepts",
                params.avg_chunk_size_bytes
            )
        })?;
    let limit = cache.max_cas_blob_size_bytes;
    if limit > 0 && size as u64 > limit as u64 {
        return Err(format!(
            "--chunked-size {size} B exceeds the server's max_cas_blob_size_bytes {limit}"
        )
        .into());
    }
    Ok(Cdc {
        avg,
        seed: params.seed,
    })
}

/// The server's chunks of the first version must be the client's: otherwise the two
/// chunkers disagree, no client would ever find its previous chunks, and the figures of the
/// chunked path would measure a broken server.
fn check_split(split: &re::SplitBlobResponse, client: &[re::Digest], cdc: Cdc) -> Result<()> {
    if split.chunking_function != FAST_CDC_2020 {
        return Err(format!(
            "CHUNK MISMATCH: SplitBlob chunked with function {} instead of FAST_CDC_2020, \
             which was asked for and advertised",
            split.chunking_function
        )
        .into());
    }
    let server = &split.chunk_digests;
    let Some(i) = (0..server.len().max(client.len())).find(|&i| server.get(i) != client.get(i))
    else {
        return Ok(());
    };
    let offset: i64 = client[..i].iter().map(|d| d.size_bytes).sum();
    let show = |d: Option<&re::Digest>| {
        d.map_or("none".to_string(), |d| {
            format!("{}/{}", d.hash, d.size_bytes)
        })
    };
    Err(format!(
        "CHUNK MISMATCH: SplitBlob returned {} chunks, client-side FastCDC 2020 (min {}, avg \
         {}, max {}, level 2, seed {}) cuts {}; first difference at chunk {i} (offset {offset}): \
         server {}, client {}",
        server.len(),
        cdc.avg / 4,
        cdc.avg,
        cdc.avg * 4,
        cdc.seed,
        client.len(),
        show(server.get(i)),
        show(client.get(i))
    )
    .into())
}

/// The chunks among `digests` that the server lacks, as [`key`]s.
async fn find_missing(conn: &Conn, digests: &[re::Digest]) -> Result<HashSet<(String, i64)>> {
    let mut cas = conn.cas();
    let mut missing = HashSet::new();
    for part in digests.chunks(FIND_MISSING_MAX) {
        let reply = cas
            .find_missing_blobs(re::FindMissingBlobsRequest {
                instance_name: conn.instance.clone(),
                blob_digests: part.to_vec(),
                digest_function: SHA256,
            })
            .await
            .map_err(|e| format!("FindMissingBlobs: {e}"))?
            .into_inner();
        missing.extend(reply.missing_blob_digests.iter().map(key));
    }
    Ok(missing)
}

/// A digest as a set key (the proto type is not `Hash`).
fn key(d: &re::Digest) -> (String, i64) {
    (d.hash.clone(), d.size_bytes)
}

/// One ByteStream Write on the shared, already warm connection.
async fn write(conn: &Conn, body: Bytes, d: &re::Digest) -> Result<()> {
    let client = Conn::bytestream_on(conn.channel());
    conn::write_blob(client, &conn.resource_prefix(), &[], body, d).await
}

fn figure(key: &'static str, value: f64) -> Figure {
    Figure {
        key,
        value: Some(value),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}
