//! TLS and mutual TLS on the gRPC port, with certificates the test makes with rcgen: a TLS
//! client that trusts the CA gets through, a plaintext one does not; with `client_ca` set, only
//! clients presenting a certificate that CA signed get through. Failed handshakes never take
//! the listener down.

mod common;

use common::TestServer;
use common::tls::{Ca, CertKey, TLS_PATIENCE, server_tls_config, tls_channel};
use rexd::proto::remote_execution as re;
use rexd::proto::remote_execution::capabilities_client::CapabilitiesClient;
use rexd::proto::remote_execution::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

/// A server with TLS (and mutual TLS when `client_ca` is given); also returns the temp dir
/// holding the PEM files, which must outlive the server's start.
async fn tls_server(ca: &Ca, client_ca: Option<&Ca>) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tls = server_tls_config(dir.path(), &ca.server_cert(), client_ca);
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    (server, dir)
}

/// GetCapabilities over `channel`, bounded in time.
async fn capabilities(channel: Channel) -> Result<re::ServerCapabilities, tonic::Status> {
    tokio::time::timeout(
        TLS_PATIENCE,
        CapabilitiesClient::new(channel).get_capabilities(re::GetCapabilitiesRequest::default()),
    )
    .await
    .expect("the call neither succeeded nor failed in time")
    .map(tonic::Response::into_inner)
}

/// A full round trip over TLS: capabilities, an upload and a read back.
async fn assert_serves(server: &TestServer, ca: &Ca, identity: Option<&CertKey>) {
    let channel = tls_channel(server.addr, &ca.cert_pem, identity)
        .await
        .expect("a TLS connection");
    let caps = capabilities(channel.clone())
        .await
        .expect("GetCapabilities");
    assert!(caps.cache_capabilities.is_some());
    let data = b"over tls".to_vec();
    let mut cas = ContentAddressableStorageClient::new(channel);
    let response = cas
        .batch_update_blobs(re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(common::digest(&data)),
                data: data.clone().into(),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .expect("BatchUpdateBlobs over TLS")
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    let read = cas
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: vec![common::digest(&data)],
            ..Default::default()
        })
        .await
        .expect("BatchReadBlobs over TLS")
        .into_inner();
    assert_eq!(read.responses[0].data.as_ref(), &data[..]);
}

/// Asserts that a client presenting `identity` (or none) cannot make a call: either the
/// handshake fails or the first call does.
async fn assert_rejected(server: &TestServer, ca_pem: &str, identity: Option<&CertKey>) {
    match tls_channel(server.addr, ca_pem, identity).await {
        Err(_) => {}
        Ok(channel) => {
            let result = capabilities(channel).await;
            assert!(result.is_err(), "the call should fail, got {result:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_call_works() {
    let ca = Ca::new("rexd test CA");
    let (server, _pems) = tls_server(&ca, None).await;
    assert_serves(&server, &ca, None).await;
    // Clients presenting a certificate are fine too when none is asked for.
    assert_serves(&server, &ca, Some(&ca.client_cert("alice"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_to_tls_server_fails() {
    let ca = Ca::new("rexd test CA");
    let (server, _pems) = tls_server(&ca, None).await;
    let endpoint = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(TLS_PATIENCE);
    match tokio::time::timeout(TLS_PATIENCE, endpoint.connect())
        .await
        .expect("a plaintext connect neither succeeded nor failed in time")
    {
        Err(_) => {}
        Ok(channel) => {
            let result = capabilities(channel).await;
            assert!(
                result.is_err(),
                "plaintext gRPC must not be served on a TLS port: {result:?}"
            );
        }
    }
    // The listener survives the garbage it was sent.
    assert_serves(&server, &ca, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_that_does_not_trust_the_server_fails() {
    let ca = Ca::new("rexd test CA");
    let (server, _pems) = tls_server(&ca, None).await;
    let stranger = Ca::new("some other CA");
    assert_rejected(&server, &stranger.cert_pem, None).await;
    assert_serves(&server, &ca, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_a_client_certificate_fails() {
    let ca = Ca::new("rexd test CA");
    let clients = Ca::new("rexd client CA");
    let (server, _pems) = tls_server(&ca, Some(&clients)).await;
    assert_rejected(&server, &ca.cert_pem, None).await;
    // Still serving the clients it should.
    assert_serves(&server, &ca, Some(&clients.client_cert("alice"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_certificate_signed_by_the_client_ca_works() {
    let ca = Ca::new("rexd test CA");
    let clients = Ca::new("rexd client CA");
    let (server, _pems) = tls_server(&ca, Some(&clients)).await;
    assert_serves(&server, &ca, Some(&clients.client_cert("alice"))).await;
    assert_serves(&server, &ca, Some(&clients.client_cert("bob"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_certificate_from_another_ca_fails() {
    let ca = Ca::new("rexd test CA");
    let clients = Ca::new("rexd client CA");
    let (server, _pems) = tls_server(&ca, Some(&clients)).await;
    let other = Ca::new("an unrelated CA");
    assert_rejected(&server, &ca.cert_pem, Some(&other.client_cert("mallory"))).await;
    // A self-signed certificate is no better.
    let self_signed = Ca::new("mallory");
    assert_rejected(
        &server,
        &ca.cert_pem,
        Some(&CertKey {
            cert_pem: self_signed.cert_pem.clone(),
            key_pem: self_signed.key_pem.clone(),
        }),
    )
    .await;
    // The server's own CA signs server certificates, not client ones: not trusted either.
    assert_rejected(&server, &ca.cert_pem, Some(&ca.client_cert("mallory"))).await;
    assert_serves(&server, &ca, Some(&clients.client_cert("alice"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_tls_files_stop_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tls = rexd::config::TlsConfig {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
        client_ca: None,
    };
    let mut server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    let err = tokio::time::timeout(TLS_PATIENCE, server.join())
        .await
        .expect("the server should fail at once")
        .expect_err("a server without its certificate must not serve");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
