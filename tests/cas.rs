//! ContentAddressableStorage over the wire: FindMissingBlobs, the batch RPCs with their
//! per-blob statuses and size limit, and GetTree with paging.

mod common;

use bytes::Bytes;
use common::{TestServer, digest, expect_rpc_status, expect_status, is_stored, upload_blobs};
use prost::Message;
use rexd::proto::remote_execution as re;
use tonic::Code;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn update(data: &[u8], digest: re::Digest) -> re::batch_update_blobs_request::Request {
    re::batch_update_blobs_request::Request {
        digest: Some(digest),
        data: Bytes::copy_from_slice(data),
        compressor: re::compressor::Value::Identity as i32,
    }
}

fn batch_update(
    requests: Vec<re::batch_update_blobs_request::Request>,
) -> re::BatchUpdateBlobsRequest {
    re::BatchUpdateBlobsRequest {
        requests,
        ..Default::default()
    }
}

// ---------------------------------------------------------------- FindMissingBlobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_reports_only_absent_blobs() {
    let server = TestServer::start().await;
    upload_blobs(&server, &[b"present"]).await;
    let absent = digest(b"absent");
    let empty = re::Digest {
        hash: EMPTY_SHA256.into(),
        size_bytes: 0,
    };
    let missing = server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(b"present"), absent.clone(), empty],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![absent]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_blob_is_always_present() {
    // A fresh store has never been sent the empty blob, yet it must never be reported missing.
    let server = TestServer::start().await;
    assert!(is_stored(&server, b"").await);
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(b"")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses.len(), 1);
    assert_eq!(read.responses[0].status.as_ref().unwrap().code, 0);
    assert!(read.responses[0].data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_rejects_malformed_digests() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    for (hash, size, needle) in [
        ("abc123", 3, "64 lower-case hex"),
        (&EMPTY_SHA256.to_uppercase()[..], 0, "lower-case hex"),
        (EMPTY_SHA256, -1, "must not be negative"),
    ] {
        let result = cas
            .find_missing_blobs(re::FindMissingBlobsRequest {
                blob_digests: vec![
                    digest(b"fine"),
                    re::Digest {
                        hash: hash.to_string(),
                        size_bytes: size,
                    },
                ],
                ..Default::default()
            })
            .await;
        expect_status(result, Code::InvalidArgument, &[needle]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_calls_reject_unknown_instance() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let result = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            instance_name: "nope".into(),
            blob_digests: vec![digest(b"x")],
            ..Default::default()
        })
        .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["unknown instance name \"nope\"", "serves"],
    );

    let result = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            instance_name: "nope".into(),
            requests: vec![update(b"x", digest(b"x"))],
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["unknown instance name"]);

    let result = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            instance_name: "nope".into(),
            digests: vec![digest(b"x")],
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["unknown instance name"]);

    let result = collect_tree(
        &server,
        re::GetTreeRequest {
            instance_name: "nope".into(),
            root_digest: Some(digest(b"")),
            ..Default::default()
        },
    )
    .await;
    expect_status(result, Code::InvalidArgument, &["unknown instance name"]);
    assert!(!is_stored(&server, b"x").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_digest_function_is_invalid_argument() {
    let server = TestServer::start().await;
    let result = server
        .cas()
        .await
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(b"x")],
            digest_function: re::digest_function::Value::Sha1 as i32,
            ..Default::default()
        })
        .await;
    // The message names the function refused and the ones on offer.
    expect_status(result, Code::InvalidArgument, &["SHA1", "SHA256"]);
}

// ---------------------------------------------------------------- BatchUpdateBlobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_stores_every_blob() {
    let server = TestServer::start().await;
    let blobs: [&[u8]; 3] = [b"one", b"two", &common::pseudo_random(100_000, 1)];
    let response = server
        .cas()
        .await
        .batch_update_blobs(batch_update(
            blobs.iter().map(|b| update(b, digest(b))).collect(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses.len(), 3);
    for (r, blob) in response.responses.iter().zip(blobs) {
        assert_eq!(r.digest, Some(digest(blob)));
        expect_rpc_status(r.status.as_ref(), Code::Ok, &[]);
    }
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: blobs.iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (r, blob) in read.responses.iter().zip(blobs) {
        expect_rpc_status(r.status.as_ref(), Code::Ok, &[]);
        assert_eq!(r.data, blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_fails_only_the_bad_blobs() {
    let server = TestServer::start().await;
    let wrong_size = re::Digest {
        size_bytes: 6,
        ..digest(b"sized")
    };
    let requests = vec![
        update(b"good one", digest(b"good one")),
        // Same length as the content the digest was made from, different bytes.
        update(b"hellO", digest(b"hello")),
        update(b"sized", wrong_size),
        update(
            b"malformed",
            re::Digest {
                hash: "not-hex".into(),
                size_bytes: 9,
            },
        ),
        re::batch_update_blobs_request::Request {
            digest: None,
            data: Bytes::from_static(b"no digest"),
            compressor: 0,
        },
        update(b"good two", digest(b"good two")),
    ];
    let response = server
        .cas()
        .await
        .batch_update_blobs(batch_update(requests))
        .await
        .unwrap()
        .into_inner();
    let r = &response.responses;
    assert_eq!(r.len(), 6);
    expect_rpc_status(r[0].status.as_ref(), Code::Ok, &[]);
    let hello = digest(b"hello");
    expect_rpc_status(
        r[1].status.as_ref(),
        Code::InvalidArgument,
        &["does not match its digest", &hello.hash],
    );
    expect_rpc_status(
        r[2].status.as_ref(),
        Code::InvalidArgument,
        &["does not match its digest"],
    );
    expect_rpc_status(
        r[3].status.as_ref(),
        Code::InvalidArgument,
        &["\"not-hex\"", "hex"],
    );
    expect_rpc_status(
        r[4].status.as_ref(),
        Code::InvalidArgument,
        &["digest is missing"],
    );
    expect_rpc_status(r[5].status.as_ref(), Code::Ok, &[]);
    assert_eq!(r[1].digest, Some(hello));

    assert!(is_stored(&server, b"good one").await);
    assert!(is_stored(&server, b"good two").await);
    assert!(
        !is_stored(&server, b"hello").await,
        "a mismatching upload must not be stored"
    );
    assert!(!is_stored(&server, b"hellO").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_accepts_zstd_entries() {
    let server = TestServer::start().await;
    let blob = common::pseudo_random(50_000, 7).repeat(4);
    let compressed = zstd::bulk::compress(&blob, 3).unwrap();
    assert!(compressed.len() < blob.len());
    let response = server
        .cas()
        .await
        .batch_update_blobs(batch_update(vec![
            re::batch_update_blobs_request::Request {
                digest: Some(digest(&blob)),
                data: Bytes::from(compressed),
                compressor: re::compressor::Value::Zstd as i32,
            },
            re::batch_update_blobs_request::Request {
                digest: Some(digest(b"garbage")),
                data: Bytes::from_static(b"this is not a zstd frame"),
                compressor: re::compressor::Value::Zstd as i32,
            },
            re::batch_update_blobs_request::Request {
                digest: Some(digest(b"deflated")),
                data: Bytes::from_static(b"deflated"),
                compressor: re::compressor::Value::Deflate as i32,
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    let r = &response.responses;
    expect_rpc_status(r[0].status.as_ref(), Code::Ok, &[]);
    expect_rpc_status(r[1].status.as_ref(), Code::InvalidArgument, &["zstd"]);
    expect_rpc_status(
        r[2].status.as_ref(),
        Code::InvalidArgument,
        &["not supported", "ZSTD"],
    );

    // Stored uncompressed: a plain read gives back the original bytes.
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(&blob)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses[0].data, blob);
    assert!(!is_stored(&server, b"garbage").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_over_the_limit_is_rejected_whole() {
    let server = TestServer::start_with(|c| {
        c.storage.max_batch_total_size = bytesize::ByteSize::kib(64);
    })
    .await;
    let a = common::pseudo_random(40 * 1024, 1);
    let b = common::pseudo_random(30 * 1024, 2);
    let result = server
        .cas()
        .await
        .batch_update_blobs(batch_update(vec![
            update(&a, digest(&a)),
            update(&b, digest(&b)),
        ]))
        .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["max_batch_total_size_bytes", "65536", "ByteStream"],
    );
    assert!(
        !is_stored(&server, &a).await,
        "nothing of a rejected batch is stored"
    );

    // Exactly at the limit is fine.
    let c = common::pseudo_random(64 * 1024, 3);
    let response = server
        .cas()
        .await
        .batch_update_blobs(batch_update(vec![update(&c, digest(&c))]))
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(response.responses[0].status.as_ref(), Code::Ok, &[]);
}

// ---------------------------------------------------------------- BatchReadBlobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_reports_missing_blobs_per_entry() {
    let server = TestServer::start().await;
    upload_blobs(&server, &[b"here"]).await;
    let gone = digest(b"gone");
    let response = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(b"here"), gone.clone()],
            // rexd may answer in IDENTITY; the test decodes whatever it gets.
            acceptable_compressors: vec![re::compressor::Value::Zstd as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &response.responses;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].digest, Some(digest(b"here")));
    expect_rpc_status(r[0].status.as_ref(), Code::Ok, &[]);
    let data = match re::compressor::Value::try_from(r[0].compressor) {
        Ok(re::compressor::Value::Identity) => r[0].data.to_vec(),
        Ok(re::compressor::Value::Zstd) => zstd::stream::decode_all(&r[0].data[..]).unwrap(),
        other => panic!("compressor {other:?} was not acceptable"),
    };
    assert_eq!(data, b"here");
    assert_eq!(r[1].digest, Some(gone.clone()));
    expect_rpc_status(
        r[1].status.as_ref(),
        Code::NotFound,
        &[&gone.hash, "not in the CAS"],
    );
    assert!(r[1].data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_over_the_limit_is_rejected() {
    let server = TestServer::start_with(|c| {
        c.storage.max_batch_total_size = bytesize::ByteSize::kib(64);
    })
    .await;
    let big = common::pseudo_random(40 * 1024, 5);
    upload_blobs(&server, &[&big]).await;
    let mut cas = server.cas().await;
    let result = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(&big), digest(&big[..30 * 1024])],
            ..Default::default()
        })
        .await;
    expect_status(
        result,
        Code::InvalidArgument,
        &["max_batch_total_size_bytes", "65536", "ByteStream"],
    );
    let result = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![re::Digest {
                hash: "xyz".into(),
                size_bytes: 1,
            }],
            ..Default::default()
        })
        .await;
    expect_status(result, Code::InvalidArgument, &["\"xyz\""]);
}

// ---------------------------------------------------------------- GetTree

use common::{dir_node as subdir, file_node as file};

/// root/{a/shared, b/shared, top.txt}: four distinct directories over three levels, where
/// `shared` is reachable twice. Returns (root, every distinct directory).
fn shared_tree() -> (re::Directory, Vec<re::Directory>) {
    let shared = re::Directory {
        files: vec![file("leaf.txt", b"leaf")],
        ..Default::default()
    };
    let a = re::Directory {
        directories: vec![subdir("shared", &shared)],
        files: vec![file("a.txt", b"a")],
        ..Default::default()
    };
    let b = re::Directory {
        directories: vec![subdir("shared", &shared)],
        ..Default::default()
    };
    let root = re::Directory {
        directories: vec![subdir("a", &a), subdir("b", &b)],
        files: vec![file("top.txt", b"top")],
        ..Default::default()
    };
    (root.clone(), vec![root, a, b, shared])
}

async fn upload_dirs(server: &TestServer, dirs: &[re::Directory]) {
    let encoded: Vec<Vec<u8>> = dirs.iter().map(Message::encode_to_vec).collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    upload_blobs(server, &refs).await;
}

/// Runs GetTree to the end of its stream. An error, whether it comes as the call's result or
/// inside the stream, is returned as the Err.
async fn collect_tree(
    server: &TestServer,
    request: re::GetTreeRequest,
) -> Result<Vec<re::GetTreeResponse>, tonic::Status> {
    let mut stream = server.cas().await.get_tree(request).await?.into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await? {
        pages.push(page);
    }
    Ok(pages)
}

fn tree_request(root: &re::Directory, page_size: i32, page_token: &str) -> re::GetTreeRequest {
    re::GetTreeRequest {
        root_digest: Some(digest(&root.encode_to_vec())),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

fn sorted(dirs: impl IntoIterator<Item = re::Directory>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = dirs.into_iter().map(|d| d.encode_to_vec()).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_lists_each_directory_once() {
    let server = TestServer::start().await;
    let (root, all) = shared_tree();
    upload_dirs(&server, &all).await;
    let pages = collect_tree(&server, tree_request(&root, 0, ""))
        .await
        .unwrap();
    assert_eq!(pages.len(), 1, "four small directories fit one page");
    assert!(pages[0].next_page_token.is_empty());
    let got: Vec<re::Directory> = pages.into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(got.len(), 4, "the shared directory is listed once");
    assert_eq!(sorted(got), sorted(all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_pages_and_resumes_from_a_token() {
    let server = TestServer::start().await;
    let (root, all) = shared_tree();
    upload_dirs(&server, &all).await;

    let pages = collect_tree(&server, tree_request(&root, 1, ""))
        .await
        .unwrap();
    assert_eq!(pages.len(), 4, "page_size 1 gives one page per directory");
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.directories.len(), 1);
        assert_eq!(
            page.next_page_token.is_empty(),
            i == 3,
            "page {i}: {:?}",
            page.next_page_token
        );
    }
    let in_order: Vec<re::Directory> = pages.iter().flat_map(|p| p.directories.clone()).collect();
    assert_eq!(sorted(in_order.clone()), sorted(all.clone()));

    let pages3 = collect_tree(&server, tree_request(&root, 3, ""))
        .await
        .unwrap();
    assert_eq!(
        pages3
            .iter()
            .map(|p| p.directories.len())
            .collect::<Vec<_>>(),
        vec![3, 1]
    );

    // Resume after the second directory with the token the second page carried.
    let token = &pages[1].next_page_token;
    let rest = collect_tree(&server, tree_request(&root, 1, token))
        .await
        .unwrap();
    let rest: Vec<re::Directory> = rest.into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(rest, in_order[2..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_errors() {
    let server = TestServer::start().await;
    let (root, all) = shared_tree();

    let missing = collect_tree(&server, tree_request(&root, 0, "")).await;
    let root_hash = digest(&root.encode_to_vec()).hash;
    expect_status(missing, Code::NotFound, &["root directory", &root_hash]);

    upload_dirs(&server, &all).await;
    for token in ["not-a-token", "-1", "99"] {
        let result = collect_tree(&server, tree_request(&root, 0, token)).await;
        expect_status(result, Code::InvalidArgument, &["page_token", token]);
    }
    let result = collect_tree(&server, tree_request(&root, -1, "")).await;
    expect_status(result, Code::InvalidArgument, &["page_size"]);
    let result = collect_tree(
        &server,
        re::GetTreeRequest {
            root_digest: None,
            ..Default::default()
        },
    )
    .await;
    expect_status(result, Code::InvalidArgument, &["root digest is missing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree_returns_the_part_that_is_present() {
    let server = TestServer::start().await;
    let (root, all) = shared_tree();
    // Upload root and `a` only: `b` is missing, and so is `shared` (never uploaded).
    upload_dirs(&server, &all[..2]).await;
    let got: Vec<re::Directory> = collect_tree(&server, tree_request(&root, 0, ""))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|p| p.directories)
        .collect();
    assert_eq!(sorted(got), sorted(all[..2].to_vec()));

    // The empty Directory encodes to the empty blob, which is always present.
    let empty = re::Directory::default();
    let got = collect_tree(&server, tree_request(&empty, 0, ""))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].directories, vec![empty]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_entry_claiming_a_huge_size_is_rejected() {
    // The claimed (uncompressed) size comes from the client: the server must not trust it
    // to size a buffer.
    let server = TestServer::start().await;
    let compressed = zstd::bulk::compress(b"tiny", 3).unwrap();
    let huge = re::Digest {
        size_bytes: 1 << 50,
        ..digest(b"tiny")
    };
    let response = server
        .cas()
        .await
        .batch_update_blobs(batch_update(vec![
            re::batch_update_blobs_request::Request {
                digest: Some(huge),
                data: Bytes::from(compressed),
                compressor: re::compressor::Value::Zstd as i32,
            },
        ]))
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(
        response.responses[0].status.as_ref(),
        Code::InvalidArgument,
        &["ByteStream"],
    );
    assert!(is_stored(&server, b"").await, "the server is still up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_removed_behind_the_servers_back_reads_as_missing() {
    let server = TestServer::start().await;
    upload_blobs(&server, &[b"fragile"]).await;
    std::fs::remove_file(common::blob_file(server.data_dir.path(), b"fragile")).unwrap();
    let read = server
        .cas()
        .await
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![digest(b"fragile")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(
        read.responses[0].status.as_ref(),
        Code::NotFound,
        &["not in the CAS"],
    );
    // From then on it is reported missing, so a client uploads it again.
    assert!(!is_stored(&server, b"fragile").await);
    upload_blobs(&server, &[b"fragile"]).await;
    assert!(is_stored(&server, b"fragile").await);
    assert!(common::blob_file(server.data_dir.path(), b"fragile").exists());
}

// ---------------------------------------------------------------- BLAKE3

fn b3(data: &[u8]) -> re::Digest {
    rexd::digest::Digest::of(rexd::digest::DigestFunction::Blake3, data).to_proto()
}

const BLAKE3: i32 = re::digest_function::Value::Blake3 as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_blobs_live_beside_sha256_ones() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let data = b"hashed with blake3";
    let response = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![
                update(data, b3(data)),
                // A SHA-256 digest does not verify under BLAKE3.
                update(b"sha", digest(b"sha")),
            ],
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(response.responses[0].status.as_ref(), Code::Ok, &[]);
    expect_rpc_status(
        response.responses[1].status.as_ref(),
        Code::InvalidArgument,
        &["does not match its digest"],
    );

    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![b3(data), b3(b"absent"), b3(b"")],
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(
        missing,
        vec![b3(b"absent")],
        "the empty blob is present for BLAKE3 too"
    );
    // The same hex under the default function (SHA-256) names another blob.
    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![b3(data)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing, vec![b3(data)]);

    let read = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![b3(data)],
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    expect_rpc_status(read.responses[0].status.as_ref(), Code::Ok, &[]);
    assert_eq!(read.responses[0].data, &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blake3_get_tree() {
    let server = TestServer::start().await;
    let leaf = re::Directory {
        files: vec![re::FileNode {
            name: "f".into(),
            digest: Some(b3(b"f")),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = re::Directory {
        directories: vec![re::DirectoryNode {
            name: "leaf".into(),
            digest: Some(b3(&leaf.encode_to_vec())),
        }],
        ..Default::default()
    };
    let blobs = [root.encode_to_vec(), leaf.encode_to_vec()];
    let response = server
        .cas()
        .await
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: blobs.iter().map(|b| update(b, b3(b))).collect(),
            digest_function: BLAKE3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for r in &response.responses {
        expect_rpc_status(r.status.as_ref(), Code::Ok, &[]);
    }
    let got = collect_tree(
        &server,
        re::GetTreeRequest {
            root_digest: Some(b3(&blobs[0])),
            digest_function: BLAKE3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got: Vec<re::Directory> = got.into_iter().flat_map(|p| p.directories).collect();
    assert_eq!(sorted(got), sorted([root.clone(), leaf]));

    // Asked under SHA-256, the same root is not there.
    let result = collect_tree(
        &server,
        re::GetTreeRequest {
            root_digest: Some(b3(&blobs[0])),
            ..Default::default()
        },
    )
    .await;
    expect_status(result, Code::NotFound, &["root directory"]);
}
