//! Test certificates made with `rcgen`: a CA, server certificates for `localhost` and
//! 127.0.0.1, client certificates, and tonic channels that present them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA's private key, PEM (to use the CA certificate itself as a client identity).
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, sans: &[&str], name: &str, usage: ExtendedKeyUsagePurpose) -> CertKey {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate valid for `localhost` and 127.0.0.1.
    pub fn server_cert(&self) -> CertKey {
        self.leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for mutual TLS.
    pub fn client_cert(&self, name: &str) -> CertKey {
        self.leaf(&[name], name, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes `contents` to `dir/name`; returns the path.
pub fn write_pem(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// PEM files of a server, written to `dir`, as rexd's `[tls]` section names them. With
/// `client_ca`, the server demands client certificates signed by it.
pub fn server_tls_config(
    dir: &Path,
    server: &CertKey,
    client_ca: Option<&Ca>,
) -> rexd::config::TlsConfig {
    rexd::config::TlsConfig {
        cert: write_pem(dir, "server.pem", &server.cert_pem),
        key: write_pem(dir, "server.key", &server.key_pem),
        client_ca: client_ca.map(|ca| write_pem(dir, "client-ca.pem", &ca.cert_pem)),
    }
}

/// Longest a TLS connection attempt or call may take before a test gives up on it.
pub const TLS_PATIENCE: Duration = Duration::from_secs(20);

/// Connects to `addr` over TLS, trusting `ca_pem`, checking the server's name as `localhost`,
/// presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&CertKey>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(TLS_PATIENCE)
        .connect()
        .await
}
