//! The `[storage.remote]` section: an S3-compatible object store behind the local disk, so
//! the cache outlives the machine and several frontends share it. Credentials never sit in
//! this file: they come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), from `credentials_file`, or from the cloud's instance metadata.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The bucket key segment of the empty instance name (see `storage::remote::keys`).
pub const EMPTY_INSTANCE_KEY: &str = "_";

/// When an upload is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WritePolicy {
    /// Only once the object store holds it: nothing acknowledged is lost with the machine.
    #[default]
    Through,
    /// Once it is durable on the local disk; a persistent queue uploads it later and
    /// survives crashes and restarts.
    Back,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// The S3 endpoint, `http(s)://host:port`; unset means AWS itself, by `region`.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix inside the bucket, so several caches can share one bucket.
    pub prefix: String,
    pub region: String,
    /// A file holding `access_key_id = "..."` and `secret_access_key = "..."` (TOML), readable
    /// by rexd's user alone; unset means the environment or instance metadata.
    pub credentials_file: Option<PathBuf>,
    pub write_policy: WritePolicy,
    /// Time limit of one request to the object store, and of connecting to it.
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// Retries of a failed request (with backoff) before the operation fails.
    pub max_retries: usize,
    /// Requests in flight to the object store from one batch (FindMissing HEADs, fetches).
    pub max_concurrency: usize,
    /// Objects older than this are deleted by the sweep; objects in use are refreshed once
    /// they pass half of it, so they never reach it. 0 keeps everything forever.
    pub max_age_days: u64,
    /// How often this frontend sweeps the bucket for expired objects (when `max_age_days` > 0).
    pub sweep_interval_secs: u64,
    /// Entries of the in-memory record of objects known to be in the bucket.
    pub existence_cache_entries: usize,
    /// Most uploads waiting in the write-back queue; past it, uploads are written through.
    pub max_write_back_queue: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            endpoint: None,
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            credentials_file: None,
            write_policy: WritePolicy::Through,
            request_timeout_secs: 30,
            connect_timeout_secs: 5,
            max_retries: 3,
            max_concurrency: 64,
            max_age_days: 0,
            sweep_interval_secs: 3600,
            existence_cache_entries: 1_000_000,
            max_write_back_queue: 100_000,
        }
    }
}

/// Access keys read from `credentials_file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
}

impl RemoteConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// `None` when objects never expire.
    pub fn max_age(&self) -> Option<Duration> {
        (self.max_age_days > 0).then(|| Duration::from_secs(self.max_age_days * 86_400))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(format!("[storage.remote]: {why}")));
        if self.bucket.is_empty() {
            return bad("bucket must be set".into());
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return bad(format!(
                    "endpoint {endpoint:?} must start with http:// or https://"
                ));
            }
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") {
            return bad(format!(
                "prefix {:?} must not start with / or hold an empty segment",
                self.prefix
            ));
        }
        if self.max_concurrency == 0 || self.existence_cache_entries == 0 {
            return bad("max_concurrency and existence_cache_entries must be at least 1".into());
        }
        if self.request_timeout_secs == 0 || self.connect_timeout_secs == 0 {
            return bad("request_timeout_secs and connect_timeout_secs must be at least 1".into());
        }
        if self.max_age_days > 0 && self.sweep_interval_secs == 0 {
            return bad("sweep_interval_secs must be at least 1 when max_age_days is set".into());
        }
        Ok(())
    }

    /// The keys in `credentials_file`, if one is named.
    pub fn read_credentials(&self) -> Result<Option<Credentials>, ConfigError> {
        let Some(path) = &self.credentials_file else {
            return Ok(None);
        };
        read_credentials_file(path).map(Some)
    }
}

fn read_credentials_file(path: &Path) -> Result<Credentials, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the object store's credentials file is readable by other users; chmod 600 it");
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!(
            "[storage.remote] credentials_file {}: {e}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::Invalid(format!(
            "[storage.remote] credentials_file {} must hold access_key_id and \
             secret_access_key: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let ok = RemoteConfig {
            bucket: "b".into(),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let err = RemoteConfig::default().validate().unwrap_err();
        assert!(err.to_string().contains("bucket"), "{err}");
        let err = RemoteConfig {
            endpoint: Some("garage:3900".into()),
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn credentials_come_from_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        std::fs::write(
            &path,
            "access_key_id = \"GK1\"\nsecret_access_key = \"s3\"\n",
        )
        .unwrap();
        let config = RemoteConfig {
            bucket: "b".into(),
            credentials_file: Some(path.clone()),
            ..Default::default()
        };
        let creds = config.read_credentials().unwrap().unwrap();
        assert_eq!(creds.access_key_id, "GK1");
        std::fs::write(&path, "access_key = \"GK1\"\n").unwrap();
        let err = config.read_credentials().err().unwrap();
        assert!(err.to_string().contains("secret_access_key"), "{err}");
    }
}
