//! How the worker reaches its server: `grpc://` or `grpcs://` (with the configured CA and,
//! for mutual TLS, the worker's own certificate), and the bearer token on every call.

use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::WorkerConfig;
use crate::error::Error;

/// Adds `authorization: Bearer ...` when the worker has a token.
#[derive(Clone)]
pub struct Token(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The token from `token_file` or `token_env`, if either is set.
fn token(config: &WorkerConfig) -> Result<Token, Error> {
    let raw = match (&config.token_file, &config.token_env) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading the token file {}", path.display()), e))?,
        ),
        (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
            Error::BadInput(format!("worker.token_env names {var}, which is not set"))
        })?),
        (None, None) => None,
    };
    let value = raw
        .map(|t| AsciiMetadataValue::try_from(format!("Bearer {}", t.trim())))
        .transpose()
        .map_err(|_| Error::BadInput("the worker's token is not printable ASCII".into()))?;
    Ok(Token(value))
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))
}

/// A lazily connecting channel to `server`; calls fail with UNAVAILABLE until it answers.
pub fn channel(server: &str, config: &WorkerConfig) -> Result<super::remote::Authed, Error> {
    let (scheme, rest) = server.split_once("://").ok_or_else(|| {
        Error::BadInput(format!(
            "--server {server:?} must start with grpc:// or grpcs://"
        ))
    })?;
    let tls = match scheme {
        "grpc" => false,
        "grpcs" => true,
        other => {
            return Err(Error::BadInput(format!(
                "--server scheme {other:?}: use grpc:// or grpcs://"
            )));
        }
    };
    let url = format!("{}://{rest}", if tls { "https" } else { "http" });
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| Error::BadInput(format!("--server {server:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if tls {
        let mut tls_config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &config.ca_cert {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(read(ca, "the CA")?));
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                tls_config = tls_config.identity(Identity::from_pem(
                    read(cert, "the client certificate")?,
                    read(key, "the client key")?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::BadInput(
                    "worker.client_cert and worker.client_key go together".into(),
                ));
            }
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| Error::BadInput(format!("TLS configuration: {e}")))?;
    }
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        token(config)?,
    ))
}
