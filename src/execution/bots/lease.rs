//! What travels in a lease, in both directions, and the checks on what comes back.
//!
//! The convention is BuildGrid's and buildbox-worker's, so that either can talk to rexd:
//! - `Lease.payload` is an `Any` holding the REAPI `Action` itself, as newer BuildGrid
//!   servers send it, which saves the bot a round trip before it can fetch the Command and
//!   inputs. buildbox-worker (like its ancestor, recc's worker) unpacks either an `Action`
//!   or an action `Digest` there, and rexd's bot accepts both too;
//! - `Lease.result` is an `Any` holding the REAPI `ActionResult`, its outputs already
//!   uploaded to the server's CAS;
//! - `Lease.status` is the lease's own status. rexd's bot sets DEADLINE_EXCEEDED or
//!   RESOURCE_EXHAUSTED there, beside the result, for an action cut short, so the client
//!   sees the same status as from a local worker.
//!
//! A digest does not name its hash function, and SHA-256 and BLAKE3 hashes look alike, so
//! `Lease.requirements` carries it as the property `_digest_function` (worker.proto keeps
//! keys starting with an underscore for implementations), next to the action's platform.

use prost::Message;
use prost_types::Any;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::execution::scheduler::Job;
use crate::proto::remote_execution::{self as re, ActionResult};
use crate::proto::remoteworkers::{Lease, Worker, worker};
use crate::proto::rpc;

const TYPE_PREFIX: &str = "type.googleapis.com/";
const DIGEST_TYPE: &str = "build.bazel.remote.execution.v2.Digest";
const ACTION_TYPE: &str = "build.bazel.remote.execution.v2.Action";
const RESULT_TYPE: &str = "build.bazel.remote.execution.v2.ActionResult";
/// The requirement key naming the action's digest function.
pub const DIGEST_FUNCTION_KEY: &str = "_digest_function";

fn any(type_name: &str, message: &impl Message) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{type_name}"),
        value: message.encode_to_vec(),
    }
}

fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// The payload of a lease for `job`: the Action itself, so a bot need not read it from the
/// CAS before it knows what else to fetch. A bot takes the digest of the payload's bytes as
/// the action's, so an Action whose re-encoding does not hash to the client's digest (one
/// with fields rexd does not know, or encoded out of order) goes by its digest instead.
pub fn payload(job: &Job) -> Any {
    let digest = job.spec.action_digest;
    let encoded = any(ACTION_TYPE, &job.spec.action);
    if Digest::of(digest.function(), &encoded.value) == digest {
        encoded
    } else {
        any(DIGEST_TYPE, &digest.to_proto())
    }
}

/// A Worker with `platform` as its properties, then `extra`: what a lease requires, and
/// what a bot offers.
pub fn worker_with<'a>(
    platform: &std::collections::BTreeMap<String, String>,
    extra: impl IntoIterator<Item = (&'a str, String)>,
) -> Worker {
    let property = |key: &str, value: &str| worker::Property {
        key: key.to_string(),
        value: value.to_string(),
    };
    let properties = platform
        .iter()
        .map(|(k, v)| property(k, v))
        .chain(extra.into_iter().map(|(k, v)| property(k, &v)))
        .collect();
    Worker {
        properties,
        ..Default::default()
    }
}

/// The requirements of a lease for `job`: its platform and digest function.
pub fn requirements(job: &Job) -> Worker {
    let function = job.spec.action_digest.function().name().to_string();
    worker_with(&job.spec.platform, [(DIGEST_FUNCTION_KEY, function)])
}

/// What a bot is asked to run: the action's digest and, when the payload carried it, the
/// Action itself.
pub fn decode_payload(lease: &Lease) -> Result<(Digest, Option<re::Action>), Error> {
    let function = match lease
        .requirements
        .iter()
        .flat_map(|w| &w.properties)
        .find(|p| p.key == DIGEST_FUNCTION_KEY)
    {
        Some(p) => DigestFunction::from_name(&p.value).ok_or_else(|| {
            Error::BadInput(format!(
                "lease {}: unknown digest function {:?}",
                lease.id, p.value
            ))
        })?,
        None => DigestFunction::Sha256,
    };
    let payload = lease
        .payload
        .as_ref()
        .ok_or_else(|| Error::BadInput(format!("lease {} has no payload", lease.id)))?;
    let bad = |e: prost::DecodeError| {
        Error::BadInput(format!("lease {}: payload does not decode: {e}", lease.id))
    };
    match type_name(payload) {
        DIGEST_TYPE => {
            let digest = re::Digest::decode(payload.value.as_slice()).map_err(bad)?;
            Ok((Digest::from_proto(function, &digest)?, None))
        }
        ACTION_TYPE => {
            let action = re::Action::decode(payload.value.as_slice()).map_err(bad)?;
            Ok((Digest::of(function, &payload.value), Some(action)))
        }
        other => Err(Error::BadInput(format!(
            "lease {}: payload of type {other:?}; expected {DIGEST_TYPE} or {ACTION_TYPE}",
            lease.id
        ))),
    }
}

/// The lease result a bot reports for a finished run.
pub fn encode_result(result: &ActionResult) -> Any {
    any(RESULT_TYPE, result)
}

/// Reads what a bot reported for a completed lease: the ActionResult, and the error that
/// cut the run short or kept it from producing one.
pub fn decode_result(lease: &Lease, bot: &str) -> (ActionResult, Option<Error>) {
    let status = lease.status.clone().unwrap_or_default();
    let error = (status.code != 0).then(|| status_error(&status, bot));
    let Some(result) = &lease.result else {
        let error = error.unwrap_or_else(|| {
            Error::Upstream(format!(
                "bot {bot} completed lease {} without a result",
                lease.id
            ))
        });
        return (ActionResult::default(), Some(error));
    };
    if type_name(result) != RESULT_TYPE {
        let got = type_name(result).to_string();
        let error = Error::Upstream(format!(
            "bot {bot} reported a lease result of type {got:?}; rexd expects {RESULT_TYPE}"
        ));
        return (ActionResult::default(), Some(error));
    }
    match ActionResult::decode(result.value.as_slice()) {
        Ok(decoded) => (decoded, error),
        Err(e) => (
            ActionResult::default(),
            Some(Error::Upstream(format!(
                "bot {bot} reported a lease result that does not decode: {e}"
            ))),
        ),
    }
}

/// The lease status a bot reports for `error`.
pub fn error_status(error: &Error) -> rpc::Status {
    rpc::Status {
        code: error.code() as i32,
        message: error.to_string(),
        details: Vec::new(),
    }
}

fn status_error(status: &rpc::Status, bot: &str) -> Error {
    let message = format!("on bot {bot}: {}", status.message);
    match tonic::Code::from_i32(status.code) {
        tonic::Code::DeadlineExceeded => Error::TimedOut(message),
        tonic::Code::ResourceExhausted => Error::OverLimit(message),
        tonic::Code::Cancelled => Error::Cancelled(message),
        tonic::Code::InvalidArgument => Error::BadInput(message),
        _ => Error::Upstream(message),
    }
}

/// Checks a bot's result before it can reach the action cache: every path stays inside the
/// exec root ([`check_paths`]), and every blob it names is in this server's CAS.
pub fn check_result(
    cas: &crate::storage::Cas,
    function: DigestFunction,
    result: &ActionResult,
    working_directory: &str,
    bot: &str,
) -> Result<(), Error> {
    check_paths(result, working_directory, bot)?;
    let missing = crate::storage::tree::missing_blobs_of_result(cas, function, result)
        .map_err(|e| Error::Upstream(format!("bot {bot} reported an unusable result: {e}")))?;
    if let Some(first) = missing.first() {
        return Err(Error::Upstream(format!(
            "bot {bot} reported {} output blobs that are not in the CAS (first: {first}); \
             result discarded",
            missing.len()
        )));
    }
    Ok(())
}

/// Every output path of `result` is relative and, taken from `working_directory` (as output
/// paths are, `..` included), stays inside the exec root.
#[allow(deprecated)] // The older symlink lists are checked too, as clients may read them.
pub fn check_paths(result: &ActionResult, working_directory: &str, bot: &str) -> Result<(), Error> {
    let paths = result
        .output_files
        .iter()
        .map(|f| &f.path)
        .chain(result.output_directories.iter().map(|d| &d.path))
        .chain(result.output_symlinks.iter().map(|s| &s.path))
        .chain(result.output_file_symlinks.iter().map(|s| &s.path))
        .chain(result.output_directory_symlinks.iter().map(|s| &s.path));
    for path in paths {
        if !inside_exec_root(working_directory, path) {
            return Err(Error::Upstream(format!(
                "bot {bot} reported output path {path:?}, which leaves the exec root; result \
                 discarded"
            )));
        }
    }
    Ok(())
}

/// A relative path that, from `working_directory`, names the exec root or something in it.
fn inside_exec_root(working_directory: &str, path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && crate::execution::spec::resolve_relative(working_directory, path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside() {
        assert!(inside_exec_root("", "out/a.o"));
        assert!(inside_exec_root("a/b", "."));
        assert!(inside_exec_root("a/b", "../../install"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(!inside_exec_root("", bad), "{bad:?}");
        }
        assert!(!inside_exec_root("a/b", "../../../x"));
    }

    #[test]
    fn results_of_other_types_are_refused() {
        let lease = Lease {
            id: "l".into(),
            result: Some(any(DIGEST_TYPE, &re::Digest::default())),
            ..Default::default()
        };
        let (_, error) = decode_result(&lease, "b");
        assert!(error.unwrap().to_string().contains("expects"));
        let garbage = Lease {
            id: "l".into(),
            result: Some(Any {
                type_url: format!("{TYPE_PREFIX}{RESULT_TYPE}"),
                value: vec![0xff, 0xff],
            }),
            ..Default::default()
        };
        assert!(decode_result(&garbage, "b").1.is_some());
    }

    #[test]
    fn timeouts_come_back_as_timeouts() {
        let lease = Lease {
            id: "l".into(),
            status: Some(error_status(&Error::TimedOut("slow".into()))),
            result: Some(encode_result(&ActionResult::default())),
            ..Default::default()
        };
        assert!(matches!(
            decode_result(&lease, "b").1,
            Some(Error::TimedOut(_))
        ));
    }

    #[test]
    fn payloads_name_their_digest_function() {
        let digest = Digest::of(DigestFunction::Blake3, b"action");
        let lease = Lease {
            id: "l".into(),
            payload: Some(any(DIGEST_TYPE, &digest.to_proto())),
            requirements: Some(Worker {
                properties: vec![worker::Property {
                    key: DIGEST_FUNCTION_KEY.into(),
                    value: "blake3".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(decode_payload(&lease).unwrap().0, digest);
        let unknown = Lease {
            payload: Some(any("x.Y", &re::Digest::default())),
            ..lease
        };
        assert!(decode_payload(&unknown).is_err());
    }
}
