//! The `[worker]` section: how `rexd worker` reaches the server whose leases it runs. A
//! worker reads the same file format as the server, so its storage, sandbox and
//! `execution.local_workers` (its concurrent leases) use the keys a server uses.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// `grpc://HOST:PORT` or `grpcs://HOST:PORT`; `--server` overrides it.
    pub server: Option<String>,
    /// The name this bot reports; unset, the host name.
    pub bot_id: Option<String>,
    /// The instance (the bot session's farm) whose actions the worker runs.
    pub instance_name: String,
    /// A file holding the bearer token (with the `bot` role) the worker presents.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding that token, if not a file.
    pub token_env: Option<String>,
    /// PEM CA bundle that signed the server's certificate (grpcs only); unset, the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate and key the worker presents to a server that asks for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}
