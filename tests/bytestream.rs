//! ByteStream over the wire: chunked writes and reads, offsets and limits, verification of
//! uploads, resumable writes, resource-name forms, and zstd `compressed-blobs`.

mod common;

use bytes::Bytes;
use common::{TestServer, blob_path, digest, expect_status, is_stored, pseudo_random, upload_path};
use futures::StreamExt as _;
use rexd::config::InstanceConfig;
use rexd::proto::bytestream::{
    QueryWriteStatusRequest, ReadRequest, WriteRequest, WriteResponse,
    byte_stream_client::ByteStreamClient,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

const MIB: usize = 1024 * 1024;

/// The requests of one Write stream carrying `data` from `offset` in `chunk`-sized messages.
/// Only the first names the resource, as clients do; `finish` marks the last one.
fn write_requests(
    name: &str,
    data: &[u8],
    offset: usize,
    chunk: usize,
    finish: bool,
) -> Vec<WriteRequest> {
    let mut requests: Vec<WriteRequest> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| WriteRequest {
            resource_name: if i == 0 {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: (offset + i * chunk) as i64,
            finish_write: false,
            data: Bytes::copy_from_slice(piece),
        })
        .collect();
    if requests.is_empty() {
        requests.push(WriteRequest {
            resource_name: name.to_string(),
            write_offset: offset as i64,
            ..Default::default()
        });
    }
    requests.last_mut().unwrap().finish_write = finish;
    requests
}

/// Sends `requests` as one Write stream that then ends.
async fn write(server: &TestServer, requests: Vec<WriteRequest>) -> Result<WriteResponse, Status> {
    server
        .bytestream()
        .await
        .write(futures::stream::iter(requests))
        .await
        .map(tonic::Response::into_inner)
}

/// Reads a resource to the end; also returns the size of each message received.
async fn read_chunks(
    bs: &mut ByteStreamClient<Channel>,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<(Vec<u8>, Vec<usize>), Status> {
    let mut stream = bs
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    let mut sizes = Vec::new();
    while let Some(msg) = stream.message().await? {
        sizes.push(msg.data.len());
        data.extend_from_slice(&msg.data);
    }
    Ok((data, sizes))
}

async fn read(server: &TestServer, name: &str, offset: i64, limit: i64) -> Result<Vec<u8>, Status> {
    let mut bs = server.bytestream().await;
    read_chunks(&mut bs, name, offset, limit)
        .await
        .map(|(data, _)| data)
}

/// Names of the upload temp files the server holds in `{data_dir}/tmp`.
fn upload_temp_files(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.data_dir.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("upload-"))
        .collect()
}

fn compressed_path(data: &[u8]) -> String {
    let d = digest(data);
    format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes)
}

fn compressed_upload_path(data: &[u8]) -> String {
    format!("uploads/{}/{}", uuid::Uuid::new_v4(), compressed_path(data))
}

async fn query(server: &TestServer, name: &str) -> Result<(i64, bool), Status> {
    let r = server
        .bytestream()
        .await
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.to_string(),
        })
        .await?
        .into_inner();
    Ok((r.committed_size, r.complete))
}

// ---------------------------------------------------------------- round trips

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_multi_mib_blob() {
    let server = TestServer::start().await;
    let data = pseudo_random(3 * MIB + 12_345, 42);
    let response = write(
        &server,
        write_requests(&upload_path(&data), &data, 0, 300_000, true),
    )
    .await
    .unwrap();
    assert_eq!(response.committed_size, data.len() as i64);
    assert!(is_stored(&server, &data).await);

    let mut bs = server.bytestream().await;
    let (back, sizes) = read_chunks(&mut bs, &blob_path(&data), 0, 0).await.unwrap();
    assert!(back == data, "read-back content differs");
    assert!(
        sizes.len() > 1,
        "a multi-MiB read comes in several messages"
    );
    assert!(
        sizes.iter().all(|&n| n > 0 && n <= 4 * MIB),
        "every message fits a client's default 4 MiB limit: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mib_messages_are_accepted() {
    // BuildStream (buildbox-casd) writes in 2 MiB messages.
    let server = TestServer::start().await;
    let data = pseudo_random(4 * MIB + 7, 3);
    let response = write(
        &server,
        write_requests(&upload_path(&data), &data, 0, 2 * MIB, true),
    )
    .await
    .unwrap();
    assert_eq!(response.committed_size, data.len() as i64);
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_honours_offset_and_limit() {
    let server = TestServer::start().await;
    let data = pseudo_random(3 * MIB + 5, 9);
    write(
        &server,
        write_requests(&upload_path(&data), &data, 0, MIB, true),
    )
    .await
    .unwrap();
    let name = blob_path(&data);
    let len = data.len() as i64;
    for (offset, limit, expected) in [
        (0, 100, &data[..100]),
        (10, 100, &data[10..110]),
        (MIB as i64 - 3, 7, &data[MIB - 3..MIB + 4]),
        (2 * MIB as i64, 0, &data[2 * MIB..]),
        (len - 5, 100, &data[data.len() - 5..]),
        (len, 0, &[][..]),
        (0, len + 1000, &data[..]),
    ] {
        let got = read(&server, &name, offset, limit).await.unwrap();
        assert!(
            got == expected,
            "offset {offset} limit {limit}: got {} bytes",
            got.len()
        );
    }
    // The empty blob reads as nothing at all.
    assert!(
        read(&server, &blob_path(b""), 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_errors() {
    let server = TestServer::start().await;
    let data = b"0123456789".to_vec();
    write(
        &server,
        write_requests(&upload_path(&data), &data, 0, 4, true),
    )
    .await
    .unwrap();
    let name = blob_path(&data);

    let past_end = read(&server, &name, 11, 0).await;
    expect_status(past_end, Code::OutOfRange, &["read_offset 11", "10 bytes"]);
    let negative = read(&server, &name, -1, 0).await;
    expect_status(negative, Code::OutOfRange, &["read_offset -1"]);
    let negative_limit = read(&server, &name, 0, -1).await;
    expect_status(negative_limit, Code::InvalidArgument, &["read_limit"]);

    let missing = digest(b"never written");
    let result = read(&server, &blob_path(b"never written"), 0, 0).await;
    expect_status(result, Code::NotFound, &[&missing.hash, "not in the CAS"]);
}

// ---------------------------------------------------------------- resource names

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resource_names_are_invalid_argument() {
    let server = TestServer::start().await;
    let h = digest(b"abc").hash;
    let read_names = [
        (String::new(), "expected"),
        ("blobs".to_string(), "expected"),
        (format!("blobs/{h}"), "expected"),
        (format!("blobs/{h}/x"), "\"x\""),
        (format!("blobs/{h}/-3"), "must not be negative"),
        (format!("blobs/{}/3", &h[1..]), "no supported length"),
        (format!("blobs/{}/3", h.to_uppercase()), "lower-case hex"),
        (format!("blobs/{h}/3/extra"), "after the size"),
        (format!("compressed-blobs/lz4/{h}/3"), "\"lz4\""),
        (format!("compressed-blobs/{h}/3"), "unsupported compressor"),
        (format!("uploads/blobs/{h}/3"), "reserved"),
        (
            format!("nope/blobs/{h}/3"),
            "unknown instance name \"nope\"",
        ),
    ];
    for (name, needle) in &read_names {
        let result = read(&server, name, 0, 0).await;
        let status = expect_status(result, Code::InvalidArgument, &[needle]);
        assert!(
            status.message().contains(&format!("{name:?}")) || needle.contains("instance"),
            "the message names the resource: {:?}",
            status.message()
        );
    }

    let write_names = [
        (format!("blobs/{h}/3"), "uploads/"),
        (format!("uploads/blobs/{h}/3"), "upload id"),
        (format!("uploads//blobs/{h}/3"), "upload id"),
        (format!("uploads/u1/{h}/3"), "expected `blobs/`"),
        (format!("uploads/u1/blobs/{h}"), "expected `{hash}/{size}`"),
        (format!("uploads/u1/blobs/{h}/three"), "\"three\""),
        (format!("uploads/u1/compressed-blobs/br/{h}/3"), "\"br\""),
        (
            format!("nope/uploads/u1/blobs/{h}/3"),
            "unknown instance name",
        ),
    ];
    for (name, needle) in &write_names {
        let result = write(&server, write_requests(name, b"abc", 0, 3, true)).await;
        expect_status(result, Code::InvalidArgument, &[needle]);
        let result = query(&server, name).await;
        expect_status(result, Code::InvalidArgument, &[needle]);
    }
    assert!(!is_stored(&server, b"abc").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_prefixes_and_trailing_metadata() {
    let server =
        TestServer::start_with(|c| c.instances.push(InstanceConfig::named("ci/linux"))).await;
    let data = pseudo_random(100_000, 11);
    let d = digest(&data);
    let name = format!(
        "ci/linux/uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash,
        d.size_bytes
    );
    let response = write(&server, write_requests(&name, &data, 0, 30_000, true))
        .await
        .unwrap();
    assert_eq!(response.committed_size, data.len() as i64);
    assert!(
        read(&server, &format!("ci/linux/{}", blob_path(&data)), 0, 0)
            .await
            .unwrap()
            == data
    );
    // One CAS serves every instance.
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);

    // Segments after the size are client metadata, to be ignored.
    let other = pseudo_random(5_000, 12);
    let name = format!("{}/path/to/some file.o", upload_path(&other));
    let response = write(&server, write_requests(&name, &other, 0, 1_000, true))
        .await
        .unwrap();
    assert_eq!(response.committed_size, other.len() as i64);
    assert!(is_stored(&server, &other).await);
}

// ---------------------------------------------------------------- verification

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_do_not_match_the_digest_are_rejected() {
    let server = TestServer::start().await;
    let data = pseudo_random(200_000, 5);
    let d = digest(&data);

    // Same size, different bytes.
    let mut tampered = data.clone();
    tampered[150_000] ^= 1;
    let result = write(
        &server,
        write_requests(&upload_path(&data), &tampered, 0, 64 * 1024, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["does not match its digest", &d.hash],
    );
    assert!(
        !is_stored(&server, &data).await,
        "a mismatching upload must not be stored"
    );
    assert!(!is_stored(&server, &tampered).await);

    // The same in one message (the path a whole small blob takes).
    let result = write(
        &server,
        write_requests(&upload_path(&data), &tampered, 0, data.len(), true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["does not match its digest", &d.hash],
    );
    assert!(!is_stored(&server, &data).await);
    assert!(!is_stored(&server, &tampered).await);

    // More bytes than the size in the name.
    let mut longer = data.clone();
    longer.push(0);
    let result = write(
        &server,
        write_requests(&upload_path(&data), &longer, 0, 64 * 1024, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["more data than the digest's size", "200000"],
    );
    assert!(!is_stored(&server, &data).await);

    // Fewer bytes than the size, then finish_write.
    let result = write(
        &server,
        write_requests(&upload_path(&data), &data[..199_999], 0, 64 * 1024, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["ended after 199999 bytes", "200000"],
    );
    assert!(!is_stored(&server, &data).await);

    // A write_offset that skips bytes within the stream.
    let mut requests = write_requests(&upload_path(&data), &data, 0, 64 * 1024, true);
    requests[1].write_offset += 1;
    let result = write(&server, requests).await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["write_offset 65537", "65536 bytes"],
    );
    assert!(!is_stored(&server, &data).await);

    // An empty stream.
    let result = write(&server, Vec::new()).await;
    expect_status(result, Code::InvalidArgument, &["no request"]);

    // Rejected uploads leave no temp files behind.
    assert_eq!(upload_temp_files(&server), Vec::<String>::new());
}

// ---------------------------------------------------------------- resumable uploads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_write_resumes_from_committed_size() {
    let server = TestServer::start().await;
    let data = pseudo_random(2 * MIB + 17, 21);
    let half = data.len() / 2;
    let name = upload_path(&data);

    // The stream ends after half the bytes, without finish_write.
    let result = write(
        &server,
        write_requests(&name, &data[..half], 0, 256 * 1024, false),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["without finish_write", &half.to_string()],
    );
    assert!(!is_stored(&server, &data).await);
    assert_eq!(query(&server, &name).await.unwrap(), (half as i64, false));

    // Resuming at the wrong offset is refused and says where to resume; the upload survives.
    let result = write(
        &server,
        write_requests(&name, &data[half + 1..], half + 1, 256 * 1024, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &[&format!("committed_size is {half}")],
    );
    assert_eq!(query(&server, &name).await.unwrap(), (half as i64, false));

    let response = write(
        &server,
        write_requests(&name, &data[half..], half, 256 * 1024, true),
    )
    .await
    .unwrap();
    assert_eq!(response.committed_size, data.len() as i64);
    assert_eq!(
        query(&server, &name).await.unwrap(),
        (data.len() as i64, true)
    );
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);
    assert_eq!(upload_temp_files(&server), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_write_status_of_unknown_and_complete_uploads() {
    let server = TestServer::start().await;
    let data = pseudo_random(10_000, 31);
    let name = upload_path(&data);
    let result = query(&server, &name).await;
    expect_status(result, Code::NotFound, &["no upload", &name]);

    write(&server, write_requests(&name, &data, 0, 4_000, true))
        .await
        .unwrap();
    assert_eq!(
        query(&server, &name).await.unwrap(),
        (data.len() as i64, true)
    );
    // Any upload name for a stored blob reports it complete.
    assert_eq!(
        query(&server, &upload_path(&data)).await.unwrap(),
        (data.len() as i64, true)
    );

    // A resume offset for an upload that never started.
    let other = pseudo_random(10_000, 32);
    let result = write(
        &server,
        write_requests(&upload_path(&other), &other[5_000..], 5_000, 4_000, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["write_offset 5000", "committed_size is 0"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_of_a_stored_blob_returns_early() {
    let server = TestServer::start().await;
    let data = pseudo_random(2 * MIB, 41);
    write(
        &server,
        write_requests(&upload_path(&data), &data, 0, MIB, true),
    )
    .await
    .unwrap();

    // Send only the first chunk and keep the stream open: the server must answer without
    // waiting for the rest.
    let first = write_requests(&upload_path(&data), &data, 0, MIB, true).remove(0);
    let stream = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let mut bs = server.bytestream().await;
    let response = tokio::time::timeout(std::time::Duration::from_secs(60), bs.write(stream))
        .await
        .expect("the server should end the upload of a stored blob at once")
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, data.len() as i64);

    // The empty blob is always stored.
    let response = write(&server, write_requests(&upload_path(b""), b"", 0, 1, true))
        .await
        .unwrap();
    assert_eq!(response.committed_size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_of_one_blob_both_succeed() {
    let server = TestServer::start().await;
    let data = pseudo_random(MIB + 3, 51);
    let (a, b) = tokio::join!(
        write(
            &server,
            write_requests(&upload_path(&data), &data, 0, 128 * 1024, true)
        ),
        write(
            &server,
            write_requests(&upload_path(&data), &data, 0, 128 * 1024, true)
        ),
    );
    assert_eq!(a.unwrap().committed_size, data.len() as i64);
    assert_eq!(b.unwrap().committed_size, data.len() as i64);
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);
}

// ---------------------------------------------------------------- zstd

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_round_trip() {
    let server = TestServer::start().await;
    // Compressible: a pseudo-random block repeated.
    let data = pseudo_random(256 * 1024, 61).repeat(12);
    let compressed = zstd::bulk::compress(&data, 3).unwrap();
    assert!(compressed.len() < data.len() / 4);

    // write_offset counts compressed bytes after the first message.
    let response = write(
        &server,
        write_requests(
            &compressed_upload_path(&data),
            &compressed,
            0,
            100_000,
            true,
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.committed_size, compressed.len() as i64);
    assert!(is_stored(&server, &data).await);

    let wire = read(&server, &compressed_path(&data), 0, 0).await.unwrap();
    assert!(wire.len() < data.len(), "a compressed read is compressed");
    assert!(zstd::stream::decode_all(&wire[..]).unwrap() == data);
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);

    // read_offset counts uncompressed bytes.
    let offset = 1_000_003;
    let wire = read(&server, &compressed_path(&data), offset as i64, 0)
        .await
        .unwrap();
    assert!(zstd::stream::decode_all(&wire[..]).unwrap() == data[offset..]);

    // A compressed upload of a stored blob ends at once with committed_size -1.
    let response = write(
        &server,
        write_requests(
            &compressed_upload_path(&data),
            &compressed,
            0,
            100_000,
            true,
        ),
    )
    .await
    .unwrap();
    assert_eq!(response.committed_size, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_plain_blob_read_compressed() {
    // Uploaded plain, read compressed.
    let server = TestServer::start().await;
    let data = pseudo_random(1_500_000, 71);
    write(
        &server,
        write_requests(&upload_path(&data), &data, 0, MIB, true),
    )
    .await
    .unwrap();
    let wire = read(&server, &compressed_path(&data), 0, 0).await.unwrap();
    assert!(zstd::stream::decode_all(&wire[..]).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_zstd_uploads_are_rejected() {
    let server = TestServer::start().await;
    let data = pseudo_random(64 * 1024, 81).repeat(4);
    let compressed = zstd::bulk::compress(&data, 3).unwrap();

    // A frame cut short decompresses to too few bytes.
    let cut = &compressed[..compressed.len() - 10];
    let result = write(
        &server,
        write_requests(&compressed_upload_path(&data), cut, 0, 4_096, true),
    )
    .await;
    expect_status(result, Code::InvalidArgument, &[&digest(&data).hash]);
    assert!(!is_stored(&server, &data).await);

    // Bytes that are not zstd at all.
    let result = write(
        &server,
        write_requests(
            &compressed_upload_path(&data),
            b"definitely not zstd",
            0,
            4_096,
            true,
        ),
    )
    .await;
    expect_status(result, Code::InvalidArgument, &["upload of"]);

    // Valid zstd of other content.
    let other = zstd::bulk::compress(&pseudo_random(data.len(), 82), 1).unwrap();
    let result = write(
        &server,
        write_requests(&compressed_upload_path(&data), &other, 0, 4_096, true),
    )
    .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["does not match its digest"],
    );
    assert!(!is_stored(&server, &data).await);
    assert_eq!(upload_temp_files(&server), Vec::<String>::new());

    // Compressed reads take no read_limit.
    upload_plain(&server, &data).await;
    let result = read(&server, &compressed_path(&data), 0, 10).await;
    expect_status(result, Code::InvalidArgument, &["read_limit", "compressed"]);
}

async fn upload_plain(server: &TestServer, data: &[u8]) {
    write(
        server,
        write_requests(&upload_path(data), data, 0, MIB, true),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_write_can_consist_of_finish_write_alone() {
    // Every byte arrived but the stream ended before finish_write; the client resumes at the
    // end with an empty, finishing message.
    let server = TestServer::start().await;
    let data = pseudo_random(300_000, 91);
    let name = upload_path(&data);
    let result = write(&server, write_requests(&name, &data, 0, 100_000, false)).await;
    expect_status(result, Code::InvalidArgument, &["without finish_write"]);
    assert_eq!(
        query(&server, &name).await.unwrap(),
        (data.len() as i64, false)
    );
    let response = write(&server, write_requests(&name, b"", data.len(), 1, true))
        .await
        .unwrap();
    assert_eq!(response.committed_size, data.len() as i64);
    assert!(read(&server, &blob_path(&data), 0, 0).await.unwrap() == data);
}

// ---------------------------------------------------------------- BLAKE3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_resources_name_the_function() {
    let server = TestServer::start().await;
    let data = pseudo_random(700_000, 101);
    let d = rexd::digest::Digest::of(rexd::digest::DigestFunction::Blake3, &data);
    let (hash, size) = (d.hash_hex(), d.size());

    let name = format!(
        "uploads/{}/blobs/blake3/{hash}/{size}",
        uuid::Uuid::new_v4()
    );
    let response = write(&server, write_requests(&name, &data, 0, 100_000, true))
        .await
        .unwrap();
    assert_eq!(response.committed_size, size as i64);
    assert!(
        read(&server, &format!("blobs/blake3/{hash}/{size}"), 0, 0)
            .await
            .unwrap()
            == data
    );
    let wire = read(
        &server,
        &format!("compressed-blobs/zstd/blake3/{hash}/{size}"),
        0,
        0,
    )
    .await
    .unwrap();
    assert!(zstd::stream::decode_all(&wire[..]).unwrap() == data);

    // Without the function segment a 64-hex hash is SHA-256: another blob, not stored.
    let result = read(&server, &format!("blobs/{hash}/{size}"), 0, 0).await;
    expect_status(result, Code::NotFound, &[&hash]);

    // Content is verified with BLAKE3.
    let other = pseudo_random(1_000, 102);
    let name = format!("uploads/{}/blobs/blake3/{hash}/1000", uuid::Uuid::new_v4());
    let result = write(&server, write_requests(&name, &other, 0, 1_000, true)).await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["does not match its digest"],
    );

    // A compressed BLAKE3 upload.
    let small = pseudo_random(50_000, 103).repeat(3);
    let d = rexd::digest::Digest::of(rexd::digest::DigestFunction::Blake3, &small);
    let name = format!(
        "uploads/{}/compressed-blobs/zstd/blake3/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size()
    );
    let compressed = zstd::bulk::compress(&small, 3).unwrap();
    write(&server, write_requests(&name, &compressed, 0, 10_000, true))
        .await
        .unwrap();
    let back = read(
        &server,
        &format!("blobs/blake3/{}/{}", d.hash_hex(), d.size()),
        0,
        0,
    )
    .await
    .unwrap();
    assert!(back == small);
}
