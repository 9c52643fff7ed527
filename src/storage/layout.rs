//! The one place that names what lives under the data directory. Every other module asks
//! here for its paths, so the layout documented in the README is the layout in force.

use std::path::{Path, PathBuf};

/// Blobs: `cas/{function}/{hh}/{hash}-{size}`.
pub fn blobs(data_dir: &Path) -> PathBuf {
    data_dir.join("cas")
}

/// Executable copies of blobs staged with the executable bit.
pub fn executable_copies(data_dir: &Path) -> PathBuf {
    data_dir.join("cas-exec")
}

/// Action results: `ac/{instance}/{function}/{hh}/...`.
pub fn action_cache(data_dir: &Path) -> PathBuf {
    data_dir.join("ac")
}

/// Remote Asset references.
pub fn assets(data_dir: &Path) -> PathBuf {
    data_dir.join("assets")
}

/// Temp files of writes in progress; on the same filesystem as everything above, so a
/// finished write is renamed into place.
pub fn tmp(data_dir: &Path) -> PathBuf {
    data_dir.join("tmp")
}

/// The workers' exec roots and captured output.
pub fn work(data_dir: &Path) -> PathBuf {
    data_dir.join("work")
}

/// The CAS use order saved across restarts.
pub fn use_order(data_dir: &Path) -> PathBuf {
    data_dir.join("index.lru")
}

/// Uploads queued for the object store in write-back mode.
pub fn write_back(data_dir: &Path) -> PathBuf {
    data_dir.join("remote-queue")
}
