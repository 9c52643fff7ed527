//! The crate's error type and its single mapping onto gRPC statuses.
//!
//! Core modules return [`Error`]; only the service adapters turn it into a `tonic::Status`,
//! through the one `From` impl below, so every RPC reports the same kind of failure the same way.

use std::io;

use prost::Message;

use crate::digest::Digest;
use crate::proto::rpc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Blobs a request depends on are not in the CAS; reported as a `PreconditionFailure`.
    #[error("{} blob(s) missing from the CAS: {}", .0.len(), missing_list(.0))]
    MissingBlobs(Vec<Digest>),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Cancelled(String),
    /// A consistency check failed (e.g. a download does not match its `checksum.sri`).
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Internal(String),
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
    /// Maps an I/O failure, naming what was being done. A full disk is the client's problem to
    /// retry later (RESOURCE_EXHAUSTED); other disk faults are transient from its point of view.
    pub fn io(context: impl std::fmt::Display, err: io::Error) -> Self {
        let msg = format!("{context}: {err}");
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                Error::ResourceExhausted(msg)
            }
            io::ErrorKind::NotFound => Error::NotFound(msg),
            _ => Error::Unavailable(msg),
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::FailedPrecondition(_) | Error::MissingBlobs(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Cancelled(_) => Code::Cancelled,
            Error::Aborted(_) => Code::Aborted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Internal(_) => Code::Internal,
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
            Error::ResourceExhausted(_) => {
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
    }
}
