//! SplitBlob and SpliceBlob (REAPI v2.12) against a real server: the advertised FastCDC 2020
//! parameters, chunk lists that match the spec's reference vectors, chunks readable from the
//! CAS, splicing verified against the target digest, and the spec's error cases.

mod common;

use bytesize::ByteSize;
use common::{TestServer, digest, expect_status, is_stored, pseudo_random, upload_blobs};
use rexd::digest::{Digest, DigestFunction};
use rexd::proto::remote_execution as re;
use tonic::Code;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/SekienAkashita.jpg"
);

/// The SHA-256 of each chunk the remote-apis v2.12.0 vectors list for the fixture at
/// avg 16 KiB (min 4 KiB, max 64 KiB), by seed.
const VECTORS_SEED_0: [&str; 6] = [
    "0f9efa589121d5d9e9e2c4ace91337d77cae866537143f6f15a0ffd525a77c2d",
    "c7c86a165573c16448cda35c9169742e85645af42be22889f8b96b8ee0ec7cb0",
    "bc88521e28a8b4479cdea5f75aa721a24f3a0a7d0be903aa6d505c574e51e89d",
    "4b8dac2652e4685c629d2bb1ae9d4448e676b86f2e67ca0b2fff3d9580184b79",
    "c0a7062da6f2386c28e086ee0cedd5732252741269838773cff1ddb05b2df6ed",
    "7fa5b12134dc75cd2ac8dc60d3a8f3c8d22f0ee9d4cf74a4aa937e2a0d2d79a5",
];
const VECTORS_SEED_666: [&str; 6] = [
    "cb3a9d80a3569772d4ed331ca37ab0c862c759897b890fc1aac90a4f2ea3a407",
    "d758c6b7b0b7eef1e996f8ccd17de6c645360b03a26c35541e7581348ac08944",
    "24846aefd89e510594bae3e9d7d5ea5012067601512610fed126a3c57ba993f5",
    "efa785e1fefb49f190e665f72fd246c1442079874508c312196da1fb3040d00b",
    "a2f557bdd8d40d8faada963ad5f91ec54b10ccee7c5ae72754a65137592dc607",
    "e131100b4a7147ccad19dc63c4a2fac1f5d8b644e1373eeb6803825024234efc",
];

/// A server cutting as the vectors do.
async fn server_with_seed(seed: u32) -> TestServer {
    TestServer::start_with(|c| {
        c.storage.chunk_average_size = ByteSize::kib(16);
        c.storage.chunk_seed = seed;
    })
    .await
}

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).expect("tests/fixtures/SekienAkashita.jpg")
}

async fn split(
    server: &TestServer,
    blob: re::Digest,
    function: DigestFunction,
) -> Result<re::SplitBlobResponse, tonic::Status> {
    server
        .cas()
        .await
        .split_blob(re::SplitBlobRequest {
            blob_digest: Some(blob),
            digest_function: function.to_proto() as i32,
            chunking_function: re::chunking_function::Value::FastCdc2020 as i32,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn splice(
    server: &TestServer,
    blob: re::Digest,
    chunks: Vec<re::Digest>,
) -> Result<re::SpliceBlobResponse, tonic::Status> {
    server
        .cas()
        .await
        .splice_blob(re::SpliceBlobRequest {
            blob_digest: Some(blob),
            chunk_digests: chunks,
            chunking_function: re::chunking_function::Value::Unknown as i32,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn read_all(server: &TestServer, digests: &[re::Digest]) -> Vec<u8> {
    let response = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: digests.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut data = Vec::new();
    for r in response.responses {
        assert_eq!(r.status.unwrap().code, 0, "{:?}", r.digest);
        data.extend_from_slice(&r.data);
    }
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_advertise_fast_cdc_and_both_rpcs() {
    let server = TestServer::start().await;
    let caps = common::server_capabilities(&server).await;
    let cache = caps.cache_capabilities.unwrap();
    assert!(cache.split_blob_support && cache.splice_blob_support);
    let params = cache.fast_cdc_2020_params.expect("FastCDC 2020 parameters");
    assert_eq!(
        params.avg_chunk_size_bytes,
        512 * 1024,
        "the spec's recommendation"
    );
    assert_eq!(params.seed, 0);
    assert!(
        cache.rep_max_cdc_params.is_none(),
        "RepMaxCDC is not offered"
    );
    let gitsha1 = re::digest_function::Value::Gitsha1 as i32;
    assert!(cache.digest_functions.contains(&gitsha1), "{cache:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_blob_gives_the_reference_chunks_readable_from_the_cas() {
    for (seed, vectors) in [(0, VECTORS_SEED_0), (666, VECTORS_SEED_666)] {
        let server = server_with_seed(seed).await;
        let data = fixture();
        upload_blobs(&server, &[&data]).await;
        let response = split(&server, digest(&data), DigestFunction::Sha256)
            .await
            .unwrap();
        assert_eq!(
            response.chunking_function,
            re::chunking_function::Value::FastCdc2020 as i32
        );
        let hashes: Vec<&str> = response
            .chunk_digests
            .iter()
            .map(|d| d.hash.as_str())
            .collect();
        assert_eq!(hashes, vectors, "seed {seed}");
        // The chunks are in the CAS and concatenate to the blob.
        assert_eq!(read_all(&server, &response.chunk_digests).await, data);
        // Asked again (from the remembered list), the answer is the same.
        let again = split(&server, digest(&data), DigestFunction::Sha256)
            .await
            .unwrap();
        assert_eq!(again.chunk_digests, response.chunk_digests);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_blob_error_cases() {
    let server = server_with_seed(0).await;
    let absent = pseudo_random(100_000, 1);
    expect_status(
        split(&server, digest(&absent), DigestFunction::Sha256).await,
        Code::NotFound,
        &["not in the CAS"],
    );
    // Under four times the average, a blob is not chunked: there is no split to give.
    let small = pseudo_random(60_000, 2);
    upload_blobs(&server, &[&small]).await;
    expect_status(
        split(&server, digest(&small), DigestFunction::Sha256).await,
        Code::NotFound,
        &["65536-byte chunking threshold", "read it whole"],
    );
    let mut cas = server.cas().await;
    expect_status(
        cas.split_blob(re::SplitBlobRequest {
            blob_digest: Some(digest(&small)),
            digest_function: 999,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["unknown digest function value 999"],
    );
    expect_status(
        cas.split_blob(re::SplitBlobRequest::default()).await,
        Code::InvalidArgument,
        &["blob digest is missing"],
    );
    // A chunking function newer than the server is only a preference: FastCDC answers.
    let data = fixture();
    upload_blobs(&server, &[&data]).await;
    let response = cas
        .split_blob(re::SplitBlobRequest {
            blob_digest: Some(digest(&data)),
            chunking_function: 7,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.chunking_function,
        re::chunking_function::Value::FastCdc2020 as i32
    );
    assert_eq!(response.chunk_digests.len(), VECTORS_SEED_0.len());
}

/// A list of chunks too long for one reply is refused before the blob is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_blob_refuses_a_list_too_long_for_one_reply() {
    let server = TestServer::start_with(|c| {
        c.storage.chunk_average_size = ByteSize::kib(1);
        c.storage.max_batch_total_size = ByteSize::kib(64);
    })
    .await;
    // 64 KiB / 80 bytes a digest is 819 chunks; 2 MiB at 1 KiB is about 2048.
    let big = pseudo_random(2 * 1024 * 1024, 5);
    common::storage::bs_write(&server, &big).await.unwrap();
    expect_status(
        split(&server, digest(&big), DigestFunction::Sha256).await,
        Code::ResourceExhausted,
        &["too many chunks", "read it whole"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_blob_assembles_a_verified_blob() {
    let server = server_with_seed(0).await;
    let parts: Vec<Vec<u8>> = (0..4)
        .map(|i| pseudo_random(30_000 + i, i as u64))
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    upload_blobs(&server, &refs).await;
    let whole = parts.concat();
    // A repeated chunk is fine: the list is just an order of pieces.
    let mut order: Vec<re::Digest> = parts.iter().map(|p| digest(p)).collect();
    order.push(digest(&parts[0]));
    let whole_repeated = [whole.clone(), parts[0].clone()].concat();
    let response = splice(&server, digest(&whole_repeated), order)
        .await
        .unwrap();
    assert_eq!(response.blob_digest, Some(digest(&whole_repeated)));
    assert!(is_stored(&server, &whole_repeated).await);
    // The spliced blob reads back whole through ByteStream, as any blob.
    let d = digest(&whole_repeated);
    let (data, end) = common::storage::bs_read(&server, &d).await;
    end.unwrap();
    assert_eq!(data, whole_repeated);
    // Splicing what is already stored is a no-op that succeeds.
    let chunks: Vec<re::Digest> = parts.iter().map(|p| digest(p)).collect();
    let again = splice(
        &server,
        digest(&whole_repeated),
        [chunks.clone(), vec![digest(&parts[0])]].concat(),
    )
    .await
    .unwrap();
    assert_eq!(again.blob_digest, Some(d));
    // Split of a spliced blob gives chunks that concatenate to it.
    let split = split(&server, digest(&whole), DigestFunction::Sha256).await;
    expect_status(split, Code::NotFound, &["not in the CAS"]);
    splice(&server, digest(&whole), chunks).await.unwrap();
    let split = split_ok(&server, &whole).await;
    assert_eq!(read_all(&server, &split).await, whole);
}

async fn split_ok(server: &TestServer, data: &[u8]) -> Vec<re::Digest> {
    split(server, digest(data), DigestFunction::Sha256)
        .await
        .unwrap()
        .chunk_digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_blob_error_cases() {
    let server = server_with_seed(0).await;
    let a = pseudo_random(20_000, 10);
    let b = pseudo_random(20_000, 11);
    upload_blobs(&server, &[&a]).await;
    let whole = [a.clone(), b.clone()].concat();

    // A chunk that is not in the CAS.
    expect_status(
        splice(&server, digest(&whole), vec![digest(&a), digest(&b)]).await,
        Code::NotFound,
        &["1 chunk(s) are not in the CAS", &digest(&b).hash],
    );
    assert!(!is_stored(&server, &whole).await);

    // Chunks that concatenate to other content of the same size: the wrong target digest.
    upload_blobs(&server, &[&b]).await;
    let wrong = [b.clone(), a.clone()].concat();
    expect_status(
        splice(&server, digest(&wrong), vec![digest(&a), digest(&b)]).await,
        Code::InvalidArgument,
        &["do not assemble blob", &digest(&wrong).hash],
    );
    assert!(
        !is_stored(&server, &wrong).await,
        "nothing is stored under a wrong name"
    );

    // Sizes that do not add up are refused before anything is read.
    let mut short = digest(&whole);
    short.size_bytes -= 1;
    expect_status(
        splice(&server, short, vec![digest(&a), digest(&b)]).await,
        Code::InvalidArgument,
        &["add up to 40000 bytes", "39999 bytes"],
    );

    // An unknown digest function, a missing target, no chunks, a bad chunk digest.
    let mut cas = server.cas().await;
    expect_status(
        cas.splice_blob(re::SpliceBlobRequest {
            blob_digest: Some(digest(&whole)),
            chunk_digests: vec![digest(&a), digest(&b)],
            digest_function: 999,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["unknown digest function value 999"],
    );
    expect_status(
        cas.splice_blob(re::SpliceBlobRequest {
            chunk_digests: vec![digest(&a)],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        &["blob digest is missing"],
    );
    expect_status(
        splice(&server, digest(&whole), vec![]).await,
        Code::InvalidArgument,
        &["names no chunks"],
    );
    let bad = re::Digest {
        hash: "XYZ".into(),
        size_bytes: 1,
    };
    expect_status(
        splice(&server, digest(&whole), vec![bad]).await,
        Code::InvalidArgument,
        &["64 lower-case hex characters"],
    );
    // The right list still works after all that.
    splice(&server, digest(&whole), vec![digest(&a), digest(&b)])
        .await
        .unwrap();
    assert!(is_stored(&server, &whole).await);
}

/// A client's chunked upload as Bazel does it: cut the new version with the advertised
/// parameters, upload only the chunks the server lacks, splice. Only the changed region's
/// chunks cross the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_of_a_changed_blob_sends_only_new_chunks() {
    let server = server_with_seed(0).await;
    let old = pseudo_random(2 * 1024 * 1024, 42);
    upload_blobs(&server, &[&old]).await;
    let old_chunks = split_ok(&server, &old).await;
    let mut new = old.clone();
    new[1_000_000..1_004_096].copy_from_slice(&pseudo_random(4096, 43));
    let params = rexd::storage::chunking::FastCdcParams {
        avg: 16 * 1024,
        seed: 0,
    };
    let cut: Vec<Vec<u8>> = params.chunks(&new[..]).map(|c| c.unwrap().data).collect();
    let cut_digests: Vec<re::Digest> = cut.iter().map(|c| digest(c)).collect();
    let missing = common::missing_of(&server, cut_digests.clone()).await;
    assert!(
        !missing.is_empty() && missing.len() <= 3,
        "{} of {} chunks",
        missing.len(),
        cut.len()
    );
    let to_send: Vec<&[u8]> = cut
        .iter()
        .filter(|c| missing.contains(&digest(c)))
        .map(Vec::as_slice)
        .collect();
    let sent: usize = to_send.iter().map(|c| c.len()).sum();
    assert!(sent < new.len() / 10, "sent {sent} of {} bytes", new.len());
    upload_blobs(&server, &to_send).await;
    splice(&server, digest(&new), cut_digests.clone())
        .await
        .unwrap();
    // The server's own split of the new version is the client's cut.
    assert_eq!(split_ok(&server, &new).await, cut_digests);
    assert!(old_chunks.len() > 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_splice_with_gitsha1() {
    let server = server_with_seed(0).await;
    let data = fixture();
    let function = DigestFunction::GitSha1;
    let name = |d: &[u8]| Digest::of(function, d).to_proto();
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(name(&data)),
                data: data.clone().into(),
                compressor: 0,
            }],
            digest_function: function.to_proto() as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    let chunks = split(&server, name(&data), function)
        .await
        .unwrap()
        .chunk_digests;
    assert_eq!(
        chunks.len(),
        VECTORS_SEED_0.len(),
        "the cut does not depend on the hash"
    );
    assert!(chunks.iter().all(|c| c.hash.len() == 40), "{chunks:?}");
    let mut cas = server.cas().await;
    let spliced = cas
        .splice_blob(re::SpliceBlobRequest {
            blob_digest: Some(name(&data)),
            chunk_digests: chunks,
            digest_function: function.to_proto() as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spliced.blob_digest, Some(name(&data)));
}

/// A chunk damaged on the server's disk is the server's fault, not the client's: SpliceBlob
/// says the chunk is missing (so the client uploads it again) rather than blaming the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splice_over_a_damaged_chunk_asks_for_it_again() {
    use std::os::unix::fs::PermissionsExt;
    let server = server_with_seed(0).await;
    let a = pseudo_random(20_000, 20);
    let b = pseudo_random(20_000, 21);
    upload_blobs(&server, &[&a, &b]).await;
    let path = common::blob_file(server.data_dir.path(), &b);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, pseudo_random(20_000, 99)).unwrap();
    let whole = [a.clone(), b.clone()].concat();
    expect_status(
        splice(&server, digest(&whole), vec![digest(&a), digest(&b)]).await,
        Code::NotFound,
        &["1 chunk(s) are not in the CAS", &digest(&b).hash],
    );
    assert!(!is_stored(&server, &b).await, "the damaged copy is gone");
    upload_blobs(&server, &[&b]).await;
    splice(&server, digest(&whole), vec![digest(&a), digest(&b)])
        .await
        .unwrap();
    assert_eq!(read_all(&server, &[digest(&whole)]).await, whole);
}
