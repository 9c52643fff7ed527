//! The TOML configuration as the operator wrote it, parsed and checked once at start-up;
//! [`Settings`] (in `checked`) derives the working values from it.
//!
//! `config/rexd.toml` documents every key and is embedded in the binary; with no `--config`,
//! rexd runs on exactly that file, so the documented defaults and the real ones cannot drift.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::Deserialize;

mod checked;
mod pools;
mod remote;
mod storage;
mod ui;
mod worker;
pub use checked::{ExecutionSettings, Settings};
pub use pools::PoolConfig;
pub use remote::{Credentials, EMPTY_INSTANCE_KEY, RemoteConfig, WritePolicy};
pub use storage::StorageConfig;
pub use ui::UiConfig;
pub use worker::WorkerConfig;

/// The documented default configuration, shipped inside the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/rexd.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Root of everything rexd stores; `None` means [`default_data_dir`].
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Log filter used when `RUST_LOG` is not set.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` for people, `json` (one object per line) for log pipelines.
    #[serde(default)]
    pub log_format: LogFormat,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub execution: ExecutionConfig,
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// The Remote Asset API (Fetch and Push).
    #[serde(default)]
    pub asset: AssetConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The web UI's retained history.
    #[serde(default)]
    pub ui: UiConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The instance names served; requests naming any other are rejected.
    #[serde(default = "default_instances")]
    pub instances: Vec<InstanceConfig>,
    /// How `rexd worker` reaches its server; the server itself ignores it.
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// The in-process scheduler and its local workers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Serve the Execution API at all; off makes rexd a pure cache.
    pub enabled: bool,
    /// Actions this host runs at once; unset means `SLOTS_PER_CPU` per CPU, 0 means none
    /// (the server only schedules, for remote bots).
    pub local_workers: Option<usize>,
    /// Timeout of an action that does not set one.
    pub default_timeout_secs: u64,
    /// Longest timeout an action may ask for; longer ones are rejected.
    pub max_timeout_secs: u64,
    /// Most actions waiting for a worker; more get RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// How long a finished operation stays queryable.
    pub operation_ttl_secs: u64,
    /// Most finished operations kept queryable; the oldest are forgotten first.
    pub max_finished_operations: usize,
    /// Most memory finished operations may hold (responses and client metadata).
    pub max_finished_operations_size: ByteSize,
    /// Memory budget of the decoded input directories kept across actions.
    pub directory_cache_size: ByteSize,
    /// Keep the directory of a failed action for debugging instead of removing it.
    pub keep_failed_action_dirs: bool,
    /// Platform properties the workers offer; an action asking for anything else is
    /// rejected. Unset means `OSFamily = "linux"` and the host's `ISA`.
    pub platform: Option<std::collections::BTreeMap<String, String>>,
    /// A bot session that has not reported for this long expires and loses its leases.
    pub bot_session_timeout_secs: u64,
    /// How often an action may be lost with a bot before it fails with UNAVAILABLE.
    pub max_lease_retries: u32,
    /// Most bot sessions at once; more get RESOURCE_EXHAUSTED.
    pub max_bot_sessions: usize,
    /// Worker pools; empty means one pool, `default`, offering `platform`.
    pub pools: Vec<PoolConfig>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            enabled: true,
            local_workers: None,
            default_timeout_secs: 600,
            max_timeout_secs: 3600,
            max_queued: 10_000,
            operation_ttl_secs: 600,
            max_finished_operations: 10_000,
            max_finished_operations_size: ByteSize::mib(16),
            directory_cache_size: ByteSize::mib(8),
            keep_failed_action_dirs: false,
            platform: None,
            bot_session_timeout_secs: 30,
            max_lease_retries: 3,
            max_bot_sessions: 1000,
            pools: Vec::new(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How actions are isolated from the host and from each other.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// `auto`: Linux namespaces through bubblewrap where they work, else plain processes
    /// with one warning at start-up. `bwrap`: namespaces or refuse to start. `plain`: none.
    pub backend: SandboxBackend,
    /// Path of the bubblewrap binary.
    pub bwrap_path: PathBuf,
    /// When rexd runs as root, worker N runs actions as uid/gid `run_as_uid_base + N`, so an
    /// action cannot write the CAS files it is handed and the process cap counts per action.
    pub run_as_uid_base: u32,
    /// Whether an action may ask for `network = "on"`.
    pub allow_network: bool,
    /// Most processes (and threads) one action may have at once.
    pub max_processes: u64,
    /// Largest total of stdout, stderr and output files of one action.
    pub max_output_size: ByteSize,
    /// Optional cap on each action process's address space.
    pub memory_limit: Option<ByteSize>,
    /// Whether each worker keeps one bubblewrap sandbox for the actions that need only the
    /// default view, instead of building one per action (see `execution::warm`).
    pub reuse_sandboxes: bool,
    /// The program run as pid 1 of such a sandbox; unset, this rexd binary. Only a program
    /// that embeds rexd (the test suites) needs to name the rexd binary here.
    pub init_program: Option<PathBuf>,
}

/// Which isolation mechanism the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxBackend {
    Auto,
    Bwrap,
    Plain,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            backend: SandboxBackend::Auto,
            bwrap_path: PathBuf::from("/usr/bin/bwrap"),
            run_as_uid_base: 61000,
            allow_network: false,
            max_processes: 4096,
            max_output_size: ByteSize::gib(16),
            memory_limit: None,
            reuse_sandboxes: true,
            init_program: None,
        }
    }
}

/// Bearer tokens; with none, authentication is off.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// Answer GetCapabilities without a token, for clients that send no headers on that
    /// call (Bazel before 3.0). A bad token is still refused.
    pub public_capabilities: bool,
}

/// TLS for the gRPC port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The plain-HTTP listener: the web UI, Prometheus metrics and health.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Whether the listener runs at all.
    pub enabled: bool,
    /// Address serving the UI, `/metrics` and `/healthz`; unset, [`DEFAULT_HTTP_LISTEN`]
    /// for a server and none for `rexd worker`.
    pub listen: Option<SocketAddr>,
}

/// Where the UI is when nothing says otherwise: loopback, next to the gRPC port.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8990";

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, if the listener is on.
    pub fn address(&self) -> Option<SocketAddr> {
        let default = || DEFAULT_HTTP_LISTEN.parse().expect("a valid address");
        self.enabled.then(|| self.listen.unwrap_or_else(default))
    }

    /// Whether no address was written, so the built-in one is used, which another rexd on
    /// the host may hold.
    pub fn is_default_address(&self) -> bool {
        self.listen.is_none()
    }
}

/// Back-pressure: bounds that keep a flood of requests from growing memory without bound.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent gRPC streams one connection may open.
    pub max_streams_per_connection: u32,
    /// Requests served at once over all connections; more wait.
    pub max_concurrent_requests: usize,
    /// Largest blob accepted; 0 means no limit beyond the disk budget.
    pub max_blob_size: ByteSize,
    /// On SIGTERM, how long running actions may take to finish before they are cancelled.
    pub shutdown_grace_secs: u64,
    /// Most interrupted ByteStream uploads kept resumable at once (each a temp file).
    pub max_resumable_uploads: usize,
    /// How long an interrupted upload stays resumable.
    pub resumable_upload_ttl_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_streams_per_connection: 1024,
            max_concurrent_requests: 4096,
            max_blob_size: ByteSize::b(0),
            shutdown_grace_secs: 30,
            max_resumable_uploads: 256,
            resumable_upload_ttl_secs: 3600,
        }
    }
}

/// The Remote Asset API: whether FetchBlob may download from origin, and within what bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssetConfig {
    /// FetchBlob downloads http(s) URIs it has no reference for; off, it only answers from
    /// references pushed or downloaded earlier.
    pub allow_downloads: bool,
    /// Host names (or IP addresses) downloads may come from; empty means any host.
    pub allowed_hosts: Vec<String>,
    /// Longest one download may take, connection to last byte.
    pub download_timeout_secs: u64,
    /// Largest download accepted.
    pub max_download_size: ByteSize,
}

impl Default for AssetConfig {
    fn default() -> Self {
        AssetConfig {
            allow_downloads: false,
            allowed_hosts: Vec::new(),
            download_timeout_secs: 600,
            max_download_size: ByteSize::gib(4),
        }
    }
}

/// Per-instance policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: String,
    /// Whether clients may call UpdateActionResult on this instance.
    #[serde(default = "yes")]
    pub allow_ac_updates: bool,
    /// How this instance's actions are isolated.
    #[serde(default)]
    pub sandbox: SandboxMode,
    /// Modes an action may pick instead, with the platform property `sandbox`.
    #[serde(default)]
    pub selectable_sandboxes: Vec<SandboxMode>,
}

/// How an action sees the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Bazel style: the host filesystem read-only, the exec root read-write, private /tmp,
    /// /proc and network.
    #[default]
    Host,
    /// BuildStream style: the input root is `/`; nothing of the host is visible.
    Chroot,
}

impl SandboxMode {
    pub fn name(self) -> &'static str {
        match self {
            SandboxMode::Host => "host",
            SandboxMode::Chroot => "chroot",
        }
    }
}

impl InstanceConfig {
    pub fn named(name: &str) -> Self {
        InstanceConfig {
            name: name.to_string(),
            allow_ac_updates: true,
            sandbox: SandboxMode::Host,
            selectable_sandboxes: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8980".parse().expect("valid address")
}

fn default_log_level() -> String {
    "info".to_string()
}

fn default_instances() -> Vec<InstanceConfig> {
    vec![InstanceConfig::named("")]
}

/// `$XDG_CACHE_HOME/rexd`, else `$HOME/.cache/rexd`, else `./rexd-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rexd");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("rexd");
    }
    PathBuf::from("rexd-data")
}

impl Default for Config {
    fn default() -> Self {
        Config::from_toml(DEFAULT_TOML).expect("the embedded default config is valid")
    }
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn instance(&self, name: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.name == name)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.instances.is_empty() {
            return invalid("`instances` must name at least one instance".into());
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if self.instances[..i].iter().any(|o| o.name == inst.name) {
                return invalid(format!("instance {:?} is listed twice", inst.name));
            }
            if !inst.name.is_empty() && inst.name.split('/').any(str::is_empty) {
                return invalid(format!(
                    "instance name {:?} has an empty segment",
                    inst.name
                ));
            }
            if let Some(seg) = inst.name.split('/').find(|s| is_reserved_segment(s)) {
                return invalid(format!(
                    "instance name {:?} contains the reserved segment {seg:?}",
                    inst.name
                ));
            }
        }
        let exec = &self.execution;
        if exec.default_timeout_secs == 0 || exec.default_timeout_secs > exec.max_timeout_secs {
            return invalid(format!(
                "execution.default_timeout_secs ({}) must be between 1 and execution.max_timeout_secs ({})",
                exec.default_timeout_secs, exec.max_timeout_secs
            ));
        }
        if self.asset.download_timeout_secs == 0 {
            return invalid("asset.download_timeout_secs must be at least 1".into());
        }
        if exec.max_queued == 0 {
            return invalid("execution.max_queued must be at least 1".into());
        }
        self.storage.validate()?;
        if self.storage.remote.is_some() && self.instance(remote::EMPTY_INSTANCE_KEY).is_some() {
            return invalid(format!(
                "instance {:?} cannot be served with [storage.remote]: the bucket stores the \
                 empty instance name's action results under that name",
                remote::EMPTY_INSTANCE_KEY
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return invalid(format!(
                "log_level {:?} is not a valid filter",
                self.log_level
            ));
        }
        Ok(())
    }
}

fn is_reserved_segment(s: &str) -> bool {
    crate::resource::RESERVED.contains(&s)
}

#[cfg(test)]
mod tests;
