//! Durable state: the content-addressed blob store, its in-memory index, the action cache,
//! the Remote Asset references, the tree walks that read Directory protos out of the CAS,
//! the uploads in progress, the layout of it all under the data directory, and the optional
//! object-store tier behind the local disk ([`remote`], joined to it in [`tiered`]).

pub mod action_cache;
pub mod asset_store;
pub mod blob_writer;
pub mod cas;
pub mod chunking;
pub mod disk;
pub mod eviction;
pub mod executable;
pub mod index;
pub mod layout;
pub mod remote;
pub mod stats;
pub mod stream;
pub mod tiered;
pub mod tree;
pub mod uploads;
pub mod verify;

pub use action_cache::ActionCache;
pub use asset_store::AssetStore;
pub use blob_writer::{BlobWriter, Unsynced};
pub use cas::{Cas, CasOptions, Lease};
pub use executable::ExecutableCache;
pub use tiered::TieredStore;

use std::path::Path;

use crate::error::Error;

/// Creates `dir` and its parents, naming it in the error.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating directory {}", dir.display()), e))
}

/// Creates `dir` readable by rexd's user alone: sandboxed actions run under other uids and
/// must not browse the store or other actions' directories.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    ensure_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("making {} private", dir.display()), e))
}

/// Writes `data` to `dest` through a temp file in `tmp_dir` and an atomic rename, so readers
/// see either nothing or the whole file.
pub(crate) fn write_atomic(
    tmp_dir: &Path,
    dest: &Path,
    data: &[u8],
    fsync: bool,
) -> Result<(), Error> {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)
        .map_err(|e| Error::io(format!("creating a temp file in {}", tmp_dir.display()), e))?;
    tmp.write_all(data)
        .map_err(|e| Error::io(format!("writing {}", tmp.path().display()), e))?;
    if fsync {
        tmp.as_file()
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", tmp.path().display()), e))?;
    }
    tmp.persist(dest)
        .map_err(|e| Error::io(format!("renaming into {}", dest.display()), e.error))?;
    Ok(())
}
