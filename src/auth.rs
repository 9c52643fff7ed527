//! Bearer-token authentication and per-instance roles.
//!
//! An interceptor on every REAPI service turns the `authorization: Bearer ...` header into an
//! [`Identity`] (or UNAUTHENTICATED); each RPC then asks [`authorize`] whether that identity
//! holds the role the call needs on the instance it names (or PERMISSION_DENIED). With no
//! tokens configured, everyone may do everything. Tokens are compared by SHA-256 and never
//! logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// What a call may do on an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// CAS and AC reads, FindMissingBlobs, Capabilities, GetOperation.
    Read,
    /// Uploads to the CAS.
    Write,
    /// Execute, WaitExecution, CancelOperation.
    Execute,
    /// UpdateActionResult: writing the action cache directly.
    AcWrite,
    /// The Bots service: taking leases and reporting their results, which end up in the
    /// action cache.
    Bot,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Execute => "execute",
            Role::AcWrite => "ac-write",
            Role::Bot => "bot",
        }
    }
}

/// One configured token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who this token belongs to; appears in logs instead of the token.
    pub name: String,
    /// Hex SHA-256 of the token (so the config file holds no secret).
    pub sha256: Option<String>,
    /// A file whose content (trimmed) is the token.
    pub file: Option<std::path::PathBuf>,
    /// An environment variable holding the token.
    pub env: Option<String>,
    /// Roles per instance name; `"*"` applies to every instance.
    pub roles: HashMap<String, BTreeSet<Role>>,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    roles: HashMap<String, BTreeSet<Role>>,
}

impl Identity {
    fn has(&self, instance: &str, role: Role) -> bool {
        [instance, "*"]
            .iter()
            .any(|i| self.roles.get(*i).is_some_and(|r| r.contains(&role)))
    }
}

/// The token table; cheap to clone.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Arc<HashMap<[u8; 32], Arc<Identity>>>,
}

/// Who made a call: `None` when authentication is off.
pub type Caller = Option<Arc<Identity>>;

impl Authenticator {
    /// Loads every token (reading files and environment variables now, once).
    pub fn from_config(tokens: &[TokenConfig]) -> Result<Self, Error> {
        let mut table = HashMap::new();
        for t in tokens {
            let hash = token_hash(t)?;
            let identity = Arc::new(Identity {
                name: t.name.clone(),
                roles: t.roles.clone(),
            });
            if table.insert(hash, identity).is_some() {
                return Err(Error::BadInput(format!(
                    "auth token {:?} is configured twice",
                    t.name
                )));
            }
        }
        Ok(Authenticator {
            tokens: Arc::new(table),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks the `authorization` header of a call.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, Error> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Error::NoCredentials(
                    "this server needs a bearer token: send `authorization: Bearer <token>` \
                     (Bazel: --remote_header=authorization=Bearer <token>)"
                        .into(),
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens
            .get(&hash)
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::NoCredentials("the bearer token is not valid".into()))
    }

    /// The tonic interceptor that authenticates every call of a service.
    pub fn interceptor(&self) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
        self.interceptor_with(false)
    }

    /// Like [`Authenticator::interceptor`], but with `anonymous`, a call without any token
    /// passes as if authentication were off (a bad token is still refused).
    pub fn interceptor_with(
        &self,
        anonymous: bool,
    ) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
        let auth = self.clone();
        move |mut request: tonic::Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if anonymous && header.is_none() {
                return Ok(request);
            }
            match auth.authenticate(header) {
                Ok(Some(identity)) => {
                    request.extensions_mut().insert(identity);
                    Ok(request)
                }
                Ok(None) => Ok(request),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn token_hash(t: &TokenConfig) -> Result<[u8; 32], Error> {
    let bad = |why: String| Error::BadInput(format!("auth token {:?}: {why}", t.name));
    let secret = match (&t.sha256, &t.file, &t.env) {
        (Some(hex_hash), None, None) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_hash, &mut out)
                .map_err(|_| bad("sha256 must be 64 hex characters".into()))?;
            return Ok(out);
        }
        (None, Some(path), None) => std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?,
        (None, None, Some(var)) => {
            std::env::var(var).map_err(|_| bad(format!("environment variable {var} is not set")))?
        }
        _ => return Err(bad("give exactly one of sha256, file or env".into())),
    };
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(bad("the token is empty".into()));
    }
    Ok(Sha256::digest(secret.as_bytes()).into())
}

/// The caller recorded by the interceptor.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Arc<Identity>>().cloned()
}

/// Whether `caller` may act as `role` on `instance`.
pub fn authorize(caller: &Caller, instance: &str, role: Role) -> Result<(), Error> {
    match caller {
        None => Ok(()),
        Some(identity) if identity.has(instance, role) => Ok(()),
        Some(identity) => Err(Error::Denied(format!(
            "token {:?} lacks the {:?} role on instance {instance:?}",
            identity.name,
            role.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(roles: &[(&str, &[Role])]) -> TokenConfig {
        TokenConfig {
            name: "ci".into(),
            sha256: Some(hex::encode(Sha256::digest(b"s3cret"))),
            file: None,
            env: None,
            roles: roles
                .iter()
                .map(|(i, r)| (i.to_string(), r.iter().copied().collect()))
                .collect(),
        }
    }

    #[test]
    fn tokens_and_roles() {
        let auth =
            Authenticator::from_config(&[config(&[("", &[Role::Read]), ("*", &[Role::Write])])])
                .unwrap();
        assert!(matches!(
            auth.authenticate(None),
            Err(Error::NoCredentials(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer nope")),
            Err(Error::NoCredentials(_))
        ));
        let caller = auth.authenticate(Some("Bearer s3cret")).unwrap();
        assert!(authorize(&caller, "", Role::Read).is_ok());
        assert!(authorize(&caller, "other", Role::Write).is_ok());
        assert!(matches!(
            authorize(&caller, "other", Role::Read),
            Err(Error::Denied(_))
        ));
        let err = authorize(&caller, "", Role::AcWrite)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn disabled_lets_everyone_in() {
        let auth = Authenticator::default();
        assert!(auth.authenticate(None).unwrap().is_none());
        assert!(authorize(&None, "x", Role::AcWrite).is_ok());
    }

    #[test]
    fn token_sources() {
        let mut t = config(&[]);
        t.sha256 = None;
        t.env = Some("REXD_TEST_TOKEN_UNSET_123".into());
        assert!(Authenticator::from_config(&[t.clone()]).is_err());
        t.env = None;
        assert!(
            Authenticator::from_config(&[t]).is_err(),
            "no source at all"
        );
    }
}
