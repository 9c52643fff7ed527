//! rexd: a standalone Remote Execution API v2 server.
//!
//! One tokio process serves the REAPI Execution, ContentAddressableStorage, ActionCache and
//! Capabilities services, google.bytestream ByteStream and google.longrunning Operations (plus
//! gRPC health and reflection) on one port, backed by an on-disk content-addressed store and
//! an in-process scheduler with local workers.
//!
//! # Layout
//! - [`auth`]: bearer tokens and per-instance roles.
//! - [`config`]: the TOML as written ([`Config`]) and the working values derived from it
//!   once at start-up ([`config::Settings`]).
//! - [`digest`]: validated digests and hashers (SHA-256, BLAKE3, GITSHA1); every digest is
//!   checked at the edge.
//! - [`resource`]: ByteStream resource-name parsing.
//! - [`storage`]: the on-disk CAS and its in-memory index, content-defined chunking for
//!   SplitBlob and SpliceBlob, the action cache, tree walks,
//!   the registry of live and interrupted ByteStream uploads, and the optional S3-compatible
//!   object-store tier behind the local disk ([`storage::TieredStore`] joins the two).
//! - [`asset`]: the Remote Asset API's references and downloads from origin.
//! - [`execution`]: the [`execution::Engine`] front door; action specs, the worker pools,
//!   the scheduler that hands actions to the executors of a pool able to run them, operations, the local worker (the first
//!   executor) with its long-lived sandbox and the directories its exec root keeps between
//!   actions, and the spawn path that starts a process without
//!   forking the server; remote bots over the Remote Workers API are the second executor.
//! - [`history`]: the bounded memory of recent executions and cache hits, by invocation.
//! - [`inspect`]: an action read back from a CAS for people, and the diff of two actions
//!   that explains a cache miss.
//! - [`web`]: the web UI on the plain-HTTP listener, next to `/metrics` and `/healthz`.
//! - [`action_cli`]: `rexd action show/rerun/diff`, against a running server over REAPI.
//! - [`bot`]: `rexd worker`, the bot that runs another rexd's actions on its host.
//! - [`service`]: one thin gRPC adapter per service.
//! - [`state`]: the shared server state the adapters and the server read.
//! - [`server`]: wires the services onto a listener and runs until shutdown.
//! - [`error`]: the crate error, which says what happened, and its single mapping onto gRPC
//!   statuses.
//! - [`offload`]: runs blocking work on the blocking pool, for every layer.
//! - [`proto`]: generated protobuf and gRPC code.

pub mod action_cli;
pub mod asset;
pub mod auth;
pub mod bot;
pub mod config;
pub mod digest;
pub mod error;
pub mod execution;
pub mod history;
pub mod inspect;
pub mod offload;
pub mod proto;
pub mod resource;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
pub mod web;

pub use config::Config;
pub use error::Error;
