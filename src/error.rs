//! The crate's error type and its single mapping onto gRPC statuses.
//!
//! Core modules return [`Error`]; only the service adapters turn it into a `tonic::Status`,
//! through the one `From` impl below, so every RPC reports the same kind of failure the same way.

use std::io;

use prost::Message;

use crate::digest::Digest;
use crate::proto::rpc;

/// What went wrong, in the words of the layer that saw it. No variant names a wire code:
/// [`Error::code`] decides those, once, for every RPC.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is malformed: a bad digest, name, field, tree or upload.
    #[error("{0}")]
    BadInput(String),
    /// What the request names is not stored: a blob, action result, operation or asset.
    #[error("{0}")]
    Absent(String),
    /// A read starts or ends past the end of the blob it names.
    #[error("{0}")]
    BeyondEnd(String),
    /// Blobs a request depends on are not in the CAS; reported as a `PreconditionFailure`.
    #[error("{} blob(s) missing from the CAS: {}", .0.len(), missing_list(.0))]
    MissingBlobs(Vec<Digest>),
    /// The action asks for what this server cannot give it: a platform no worker has, a
    /// sandbox property it does not allow, outputs outside the exec root.
    #[error("{0}")]
    Unsatisfiable(String),
    /// The disk under the data directory is full; worth retrying once eviction has run.
    #[error("{0}")]
    DiskFull(String),
    /// A configured limit was reached: queue length, blob or output size, an origin's rate.
    #[error("{0}")]
    OverLimit(String),
    /// The server is draining for shutdown and takes no new work.
    #[error("{0}")]
    ShuttingDown(String),
    /// A disk or socket operation of the server's own failed; it may pass.
    #[error("{0}")]
    Io(String),
    /// An origin server the Remote Asset API downloads from failed or could not be reached.
    #[error("{0}")]
    Upstream(String),
    /// The caller presented no credentials, or ones that are not valid.
    #[error("{0}")]
    NoCredentials(String),
    /// The caller is known but its roles do not cover the request, or a policy forbids it.
    #[error("{0}")]
    Denied(String),
    /// The work was cancelled by a client.
    #[error("{0}")]
    Cancelled(String),
    /// Two things disagree: a newer Write took over an upload, downloaded content does not
    /// match its checksum.
    #[error("{0}")]
    Conflict(String),
    /// The work ran past its time limit.
    #[error("{0}")]
    TimedOut(String),
    /// The service or feature is switched off in this server's configuration.
    #[error("{0}")]
    Disabled(String),
    /// Something that should not happen did: a task panicked, an encoder failed.
    #[error("{0}")]
    Bug(String),
}

fn missing_list(digests: &[Digest]) -> String {
    const SHOWN: usize = 5;
    let mut s = digests
        .iter()
        .take(SHOWN)
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if digests.len() > SHOWN {
        s.push_str(&format!(" and {} more", digests.len() - SHOWN));
    }
    s
}

impl Error {
    /// Names an I/O failure of the server's own. A full disk is told apart because the
    /// client can retry it once eviction has run; a missing file here is the server's
    /// fault, never the client's NOT_FOUND: callers that expect absence check for it first.
    pub fn io(context: impl std::fmt::Display, err: io::Error) -> Self {
        let msg = format!("{context}: {err}");
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::DiskFull(msg),
            _ => Error::Io(msg),
        }
    }

    /// The gRPC code this error is reported with: the one place the crate picks wire codes.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::BadInput(_) => Code::InvalidArgument,
            Error::Absent(_) => Code::NotFound,
            Error::BeyondEnd(_) => Code::OutOfRange,
            Error::MissingBlobs(_) | Error::Unsatisfiable(_) => Code::FailedPrecondition,
            Error::DiskFull(_) | Error::OverLimit(_) => Code::ResourceExhausted,
            Error::ShuttingDown(_) | Error::Io(_) | Error::Upstream(_) => Code::Unavailable,
            Error::NoCredentials(_) => Code::Unauthenticated,
            Error::Denied(_) => Code::PermissionDenied,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Conflict(_) => Code::Aborted,
            Error::TimedOut(_) => Code::DeadlineExceeded,
            Error::Disabled(_) => Code::Unimplemented,
            Error::Bug(_) => Code::Internal,
        }
    }

    /// The error as a `google.rpc.Status`, details included, for places where the protocol
    /// carries a status inside a message (batch responses, ExecuteResponse).
    pub fn to_rpc_status(&self) -> rpc::Status {
        rpc::Status {
            code: self.code() as i32,
            message: self.to_string(),
            details: self.details(),
        }
    }

    fn details(&self) -> Vec<prost_types::Any> {
        match self {
            Error::MissingBlobs(digests) => {
                let failure = rpc::PreconditionFailure {
                    violations: digests
                        .iter()
                        .map(|d| rpc::precondition_failure::Violation {
                            r#type: "MISSING".to_string(),
                            subject: d.blob_path(),
                            description: String::new(),
                        })
                        .collect(),
                };
                vec![prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.PreconditionFailure".to_string(),
                    value: failure.encode_to_vec(),
                }]
            }
            // Queue full, disk full: worth retrying after a pause, which RetryInfo says.
            Error::DiskFull(_) | Error::OverLimit(_) => {
                let info = rpc::RetryInfo {
                    retry_delay: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                };
                vec![prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
                    value: info.encode_to_vec(),
                }]
            }
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let status = err.to_rpc_status();
        if status.details.is_empty() {
            tonic::Status::new(err.code(), status.message)
        } else {
            let encoded = status.encode_to_vec();
            tonic::Status::with_details(err.code(), status.message, encoded.into())
        }
    }
}

/// An `ok` status for per-item results in batch responses.
pub fn ok_status() -> rpc::Status {
    rpc::Status::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn missing_blobs_carry_precondition_failure() {
        let d = Digest::of(DigestFunction::Sha256, b"x");
        let status: tonic::Status = Error::MissingBlobs(vec![d]).into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let decoded = rpc::Status::decode(status.details()).unwrap();
        let failure = rpc::PreconditionFailure::decode(&decoded.details[0].value[..]).unwrap();
        assert_eq!(failure.violations[0].r#type, "MISSING");
        assert_eq!(failure.violations[0].subject, format!("blobs/{d}"));
    }

    #[test]
    fn full_disk_is_resource_exhausted() {
        let err = Error::io("writing", io::Error::from_raw_os_error(28));
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let err = Error::io("writing", io::Error::from_raw_os_error(5));
        assert_eq!(err.code(), tonic::Code::Unavailable);
        // A file of the server's own that went missing is not the client's NOT_FOUND.
        let err = Error::io("reading", io::Error::from_raw_os_error(2));
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
