//! The configuration the server runs on, derived once from what the operator wrote.
//!
//! [`Config`] is the TOML as written (seconds, byte sizes, optional paths); [`Settings`] holds
//! every value in the form its user needs: `Duration`s, byte counts, the resolved data
//! directory, the platform and worker pools in force and the loaded token table. `check-config` builds it in
//! full, so a file it accepts is one `serve` starts on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{Config, ConfigError};
use crate::auth::Authenticator;
use crate::execution::bots::BotLimits;
use crate::execution::pools::{PoolId, Pools};
use crate::execution::registry::RetentionLimits;
use crate::execution::spec::SpecLimits;
use crate::storage::CasOptions;
use crate::storage::uploads::UploadLimits;

/// Worker slots per CPU when the config leaves `local_workers` unset. A slot is not busy on the CPU
/// all the time it holds an action (staging, sandbox start, storing outputs, waiting for
/// the client's next request), so one per CPU left cores idle: with Bazel on the same
/// 2-core machine, 4 per CPU took a cold remote build from 1.82x to 1.60x local.
pub const SLOTS_PER_CPU: usize = 4;

/// Everything the server reads at start-up, checked and converted.
#[derive(Clone)]
pub struct Settings {
    /// What the operator wrote, for instance policy, limits and `check-config`'s listing.
    pub written: Config,
    /// The data directory in force (the configured one, else [`super::default_data_dir`]).
    pub data_dir: PathBuf,
    pub cas: CasOptions,
    pub execution: ExecutionSettings,
    pub uploads: UploadLimits,
    /// How long running actions may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Longest one Remote Asset download may take.
    pub download_timeout: Duration,
    /// The bearer tokens, read from their files and variables.
    pub authenticator: Authenticator,
}

/// The execution engine's working values.
#[derive(Debug, Clone)]
pub struct ExecutionSettings {
    pub limits: SpecLimits,
    pub retention: RetentionLimits,
    /// Local worker slots in force (unset resolved to [`SLOTS_PER_CPU`] per CPU).
    pub workers: usize,
    pub bots: BotLimits,
    /// The platform properties the local workers offer.
    pub platform: BTreeMap<String, String>,
    /// The worker pools, and the one the local workers join (none if they fit none, which
    /// is allowed only without local workers).
    pub pools: Pools,
    pub local_pool: Option<PoolId>,
    pub max_queued: usize,
    pub directory_cache_bytes: u64,
    pub keep_failed_action_dirs: bool,
}

impl Settings {
    /// Derives the working values from a parsed and validated [`Config`], reading the token
    /// files and variables it names.
    pub fn new(written: Config) -> Result<Self, ConfigError> {
        let authenticator = Authenticator::from_config(&written.auth.tokens)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // Read once here so `check-config` finds a missing or malformed credentials file.
        if let Some(remote) = &written.storage.remote {
            remote.read_credentials()?;
        }
        let storage = &written.storage;
        let max_size = storage.max_size.as_u64();
        let exec = &written.execution;
        let limits = &written.limits;
        let workers = exec.local_workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get()) * SLOTS_PER_CPU
        });
        let platform = exec.platform.clone().unwrap_or_else(host_platform);
        let (pools, local_pool) = super::pools::resolve(&exec.pools, &platform, workers)?;
        Ok(Settings {
            data_dir: written
                .data_dir
                .clone()
                .unwrap_or_else(super::default_data_dir),
            cas: CasOptions {
                fsync: storage.fsync,
                max_size,
                low_water: max_size / 100 * storage.low_water_percent as u64,
                min_retention: Duration::from_secs(storage.min_retention_secs),
            },
            execution: ExecutionSettings {
                limits: SpecLimits {
                    default_timeout: Duration::from_secs(exec.default_timeout_secs),
                    max_timeout: Duration::from_secs(exec.max_timeout_secs),
                },
                retention: RetentionLimits {
                    ttl: Duration::from_secs(exec.operation_ttl_secs),
                    max_count: exec.max_finished_operations,
                    max_bytes: exec.max_finished_operations_size.as_u64(),
                },
                workers,
                bots: BotLimits {
                    session_timeout: Duration::from_secs(exec.bot_session_timeout_secs),
                    max_lease_retries: exec.max_lease_retries,
                    max_sessions: exec.max_bot_sessions,
                },
                platform,
                pools,
                local_pool,
                max_queued: exec.max_queued,
                directory_cache_bytes: exec.directory_cache_size.as_u64(),
                keep_failed_action_dirs: exec.keep_failed_action_dirs,
            },
            uploads: UploadLimits {
                max_parked: limits.max_resumable_uploads,
                ttl: Duration::from_secs(limits.resumable_upload_ttl_secs),
            },
            shutdown_grace: Duration::from_secs(limits.shutdown_grace_secs),
            download_timeout: Duration::from_secs(written.asset.download_timeout_secs),
            authenticator,
            written,
        })
    }
}

/// `OSFamily = "linux"` and this host's `ISA`, in the spelling clients send.
fn host_platform() -> BTreeMap<String, String> {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        other => other,
    };
    [("OSFamily", "linux"), ("ISA", isa)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_convert_to_working_values() {
        let settings = Settings::new(Config::default()).unwrap();
        assert_eq!(settings.cas.min_retention, Duration::from_secs(3600));
        assert_eq!(settings.cas.low_water, settings.cas.max_size / 100 * 90);
        assert_eq!(
            settings.execution.limits.default_timeout,
            Duration::from_secs(600)
        );
        assert_eq!(settings.execution.platform["OSFamily"], "linux");
        assert!(settings.execution.workers >= 1);
        assert_eq!(settings.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn a_missing_token_file_is_a_config_error() {
        let text = r#"
            [[auth.tokens]]
            name = "ci"
            file = "/nonexistent/rexd-token"
            roles = { "" = ["read"] }
        "#;
        let config = Config::from_toml(text).unwrap();
        let err = Settings::new(config)
            .err()
            .expect("a missing token file is refused");
        assert!(err.to_string().contains("/nonexistent/rexd-token"), "{err}");
    }
}
