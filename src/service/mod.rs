//! gRPC adapters: each file implements one service by validating the request, calling into
//! storage or the execution engine and building the reply. Errors are crate
//! [`crate::Error`]s, turned into `tonic::Status` by the one conversion in `error.rs`.

pub mod action_cache;
pub mod asset;
pub mod bots;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod chunked;
pub mod execution;
pub mod operations;
