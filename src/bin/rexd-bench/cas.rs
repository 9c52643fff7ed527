//! CAS workloads: `batch` uploads many small blobs with BatchUpdateBlobs, `find-missing`
//! asks FindMissingBlobs about a large set of which half is present.

use std::time::Instant;

use bytes::Bytes;
use rexd::proto::remote_execution as re;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data::{self, Rng};
use crate::json::Json;
use crate::report::{Figure, Latencies, Outcome, mb_per_s};

/// Smallest and largest blob of the small-blob workloads.
pub const SMALL_BLOB: (usize, usize) = (100, 4096);
/// Blobs uploaded before the timed batch run.
const WARMUP_BLOBS: usize = 500;
/// FindMissingBlobs calls before the timed ones.
const WARMUP_CALLS: usize = 2;

/// `count` small blobs from `rng`, each starting with `salt`.
pub fn small_blobs(rng: &mut Rng, salt: &data::Salt, count: usize) -> Vec<Bytes> {
    (0..count)
        .map(|_| {
            let len = rng.range(SMALL_BLOB.0, SMALL_BLOB.1);
            rng.salted(salt, len)
        })
        .collect()
}

/// Uploads `count` new small blobs in batches under the server's limit, `concurrency`
/// requests in flight.
pub async fn batch(conn: &Conn, seed: u64, count: usize, concurrency: usize) -> Result<Outcome> {
    let mut rng = Rng::new(seed, "batch");
    let warmup = small_blobs(&mut rng, &data::fresh_salt(), WARMUP_BLOBS.min(count));
    let blobs = small_blobs(&mut rng, &data::fresh_salt(), count);
    let bytes: u64 = blobs.iter().map(|b| b.len() as u64).sum();

    let (requests, _) = conn.pack(&warmup);
    conn.send_batches(requests, concurrency).await?;

    let (requests, oversized) = conn.pack(&blobs);
    if !oversized.is_empty() {
        return Err(format!(
            "the server's max_batch_total_size_bytes ({}) cannot hold a {}-byte blob",
            conn.batch_limit, SMALL_BLOB.1
        )
        .into());
    }
    let request_count = requests.len();
    let started = Instant::now();
    conn.send_batches(requests, concurrency).await?;
    let elapsed = started.elapsed();

    let rate = count as f64 / elapsed.as_secs_f64();
    Ok(Outcome {
        figures: vec![Figure {
            key: "batch_blobs_per_s",
            value: Some(rate),
        }],
        headline: format!("{rate:.0} blobs/s"),
        detail: format!(
            "{count} blobs of {}-{} B ({:.1} MB/s) in {request_count} request(s) of <= {} B, \
             {concurrency} in flight, {:.3} s",
            SMALL_BLOB.0,
            SMALL_BLOB.1,
            mb_per_s(bytes, elapsed),
            conn.batch_limit,
            elapsed.as_secs_f64()
        ),
        params: Json::obj()
            .with("blobs", count)
            .with("bytes", bytes)
            .with("requests", request_count)
            .with("concurrency", concurrency)
            .with("seconds", elapsed.as_secs_f64()),
    })
}

/// FindMissingBlobs of `count` digests, every other one present; median of `calls` calls.
pub async fn find_missing(conn: &Conn, seed: u64, count: usize, calls: usize) -> Result<Outcome> {
    let mut rng = Rng::new(seed, "find-missing");
    let salt = data::fresh_salt();
    let present = small_blobs(&mut rng, &salt, count / 2);
    let absent = small_blobs(&mut rng, &salt, count - count / 2);
    conn.upload(&present).await?;
    let mut digests = Vec::with_capacity(count);
    for (i, blob) in absent.iter().enumerate() {
        if let Some(other) = present.get(i) {
            digests.push(conn::digest(other));
        }
        digests.push(conn::digest(blob));
    }
    let request = re::FindMissingBlobsRequest {
        instance_name: conn.instance.clone(),
        blob_digests: digests,
        digest_function: 0,
    };

    let mut cas = conn.cas();
    let mut samples = Vec::with_capacity(calls);
    for i in 0..WARMUP_CALLS + calls {
        let request = request.clone();
        let started = Instant::now();
        let reply = cas
            .find_missing_blobs(request)
            .await
            .map_err(|e| format!("FindMissingBlobs: {e}"))?
            .into_inner();
        let elapsed = started.elapsed();
        if reply.missing_blob_digests.len() != absent.len() {
            return Err(format!(
                "FindMissingBlobs reported {} of {count} digests missing; {} are",
                reply.missing_blob_digests.len(),
                absent.len()
            )
            .into());
        }
        if i >= WARMUP_CALLS {
            samples.push(elapsed);
        }
    }
    let latencies = Latencies::new(&samples);
    let median = latencies.median();
    Ok(Outcome {
        figures: vec![Figure {
            key: "find_missing_median_ms",
            value: Some(median),
        }],
        headline: format!("{median:.2} ms/call"),
        detail: format!(
            "{count} digests, {} present; median of {calls} calls (p95 {:.2} ms)",
            present.len(),
            latencies.p95()
        ),
        params: Json::obj()
            .with("digests", count)
            .with("present", present.len())
            .with("calls", calls)
            .with("p95_ms", latencies.p95()),
    })
}
