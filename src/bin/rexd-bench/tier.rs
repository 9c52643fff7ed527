//! `tier`: the object-store tier across two frontends of one bucket. A large blob is
//! uploaded to the first (write-through: timed until the bucket has it) and read from the
//! second, whose disk lacks it (streamed from the bucket while it fills that disk); then
//! small blobs uploaded to the first are asked about at the second with FindMissingBlobs,
//! once cold (HEADs to the bucket) and again warm (from its record of known objects).

use std::time::Instant;

use rexd::proto::remote_execution as re;

use crate::Result;
use crate::conn::{self, Conn};
use crate::data::{self, Rng};
use crate::json::Json;
use crate::report::{Figure, Latencies, Outcome, ms};
use crate::{cas, transfer};

pub struct TierParams<'a> {
    /// The second frontend, `grpc://HOST:PORT`.
    pub reader: &'a str,
    pub seed: u64,
    pub size: usize,
    /// Digests of the FindMissingBlobs call, all present in the bucket.
    pub count: usize,
    /// Timed warm calls.
    pub calls: usize,
}

pub async fn tier(conn: &Conn, p: TierParams<'_>) -> Result<Outcome> {
    let reader = Conn::open(p.reader, &conn.instance).await?;
    let (upload, uploaded) = transfer::upload(conn, p.seed, p.size, 1).await?;
    let download = transfer::download(&reader, &uploaded).await?;

    let mut rng = Rng::new(p.seed, "tier");
    let blobs = cas::small_blobs(&mut rng, &data::fresh_salt(), p.count);
    conn.upload(&blobs).await?;
    let request = re::FindMissingBlobsRequest {
        instance_name: conn.instance.clone(),
        blob_digests: blobs.iter().map(|b| conn::digest(b)).collect(),
        digest_function: 0,
    };
    let mut cas = reader.cas();
    let mut samples = Vec::with_capacity(p.calls + 1);
    for _ in 0..=p.calls {
        let started = Instant::now();
        let reply = cas
            .find_missing_blobs(request.clone())
            .await
            .map_err(|e| format!("FindMissingBlobs at the second frontend: {e}"))?
            .into_inner();
        samples.push(started.elapsed());
        if !reply.missing_blob_digests.is_empty() {
            return Err(format!(
                "the second frontend reports {} of {} blobs in the bucket missing",
                reply.missing_blob_digests.len(),
                p.count
            )
            .into());
        }
    }
    let cold = ms(samples[0]);
    let warm = Latencies::new(&samples[1..]);
    let figure = |o: &Outcome| o.figures.first().and_then(|f| f.value);
    let (up, down) = (figure(&upload), figure(&download));
    Ok(Outcome {
        figures: vec![
            Figure {
                key: "tier_upload_mb_per_s",
                value: up,
            },
            Figure {
                key: "tier_download_mb_per_s",
                value: down,
            },
            Figure {
                key: "tier_find_missing_cold_ms",
                value: Some(cold),
            },
            Figure {
                key: "tier_find_missing_warm_ms",
                value: Some(warm.median()),
            },
        ],
        headline: format!(
            "up {} / down {}, FindMissing {cold:.1} ms cold, {:.2} ms warm",
            upload.headline,
            download.headline,
            warm.median()
        ),
        detail: format!(
            "{} MiB through the first frontend, read at the second; {} digests all in the \
             bucket, none on the second's disk; warm is the median of {} calls",
            p.size / (1024 * 1024),
            p.count,
            p.calls
        ),
        params: Json::obj()
            .with("bytes", p.size)
            .with("digests", p.count)
            .with("calls", p.calls),
    })
}
