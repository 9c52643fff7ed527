//! Input staging: materialises an action's input tree in a fresh directory by hardlinking
//! files out of the CAS (copying where a link is refused), and creates the parents of its
//! declared outputs.

use std::fs;
use std::io;
use std::path::Path;

use crate::digest::Digest;
use crate::error::Error;
use crate::execution::input_tree::InputTree;
use crate::proto::remote_execution::Command;
use crate::storage::{Cas, ExecutableCache};

/// Counts of what staging did, for logs and benchmarks.
#[derive(Default, Debug)]
pub struct StageStats {
    pub files: usize,
    pub copies: usize,
    pub directories: usize,
}

/// Materialises the input tree (already validated and loaded) into `dest`, which must
/// exist and be empty.
pub fn stage_tree(
    cas: &Cas,
    exec_cache: &ExecutableCache,
    inputs: &InputTree,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<StageStats, Error> {
    let mut stats = StageStats::default();
    chown_dir(dest, owner)?;
    let mut stack = vec![(inputs.root, dest.to_path_buf())];
    while let Some((digest, path)) = stack.pop() {
        let dir = inputs
            .directories
            .get(&digest)
            .ok_or_else(|| Error::Bug(format!("directory {digest} was not loaded")))?;
        stats.directories += 1;
        for file in &dir.files {
            if !cas.ensure_verified(&file.digest)? {
                // Evicted or found damaged since the action was accepted: the client must
                // upload it again, which a MISSING precondition failure tells it.
                return Err(Error::MissingBlobs(vec![file.digest]));
            }
            let src = if file.executable {
                exec_cache.path(cas, &file.digest)?
            } else {
                cas.blob_path(&file.digest)
            };
            if link_or_copy(&src, &path.join(&file.name))? {
                stats.copies += 1;
            }
            stats.files += 1;
        }
        for (name, target) in &dir.symlinks {
            let at = path.join(name);
            std::os::unix::fs::symlink(target, &at)
                .map_err(|e| Error::io(format!("creating symlink {}", at.display()), e))?;
        }
        for (name, sub) in &dir.directories {
            let at = path.join(name);
            fs::create_dir(&at).map_err(|e| Error::io(format!("creating {}", at.display()), e))?;
            chown_dir(&at, owner)?;
            stack.push((*sub, at));
        }
    }
    Ok(stats)
}

/// Hardlinks `src` to `dst`, copying when the filesystem refuses the link (too many links,
/// another device, no permission). Returns whether it copied.
fn link_or_copy(src: &Path, dst: &Path) -> Result<bool, Error> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(false),
        Err(e) if link_refused(&e) => {
            fs::copy(src, dst)
                .map_err(|e| Error::io(format!("copying to {}", dst.display()), e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io(format!("linking {}", dst.display()), e)),
    }
}

fn link_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::libc::EMLINK || code == nix::libc::EXDEV || code == nix::libc::EPERM
    )
}

/// Creates the parent directories of every declared output, relative to the working
/// directory, as the spec asks of workers.
pub fn create_output_parents(
    exec_root: &Path,
    command: &Command,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    make_dirs(exec_root, Path::new(&command.working_directory), owner)?;
    for output in crate::execution::spec::declared_outputs(command) {
        let Some(rel) =
            crate::execution::spec::resolve_relative(&command.working_directory, output)
        else {
            continue;
        };
        if let Some(parent) = Path::new(&rel).parent() {
            make_dirs(exec_root, parent, owner)?;
        }
    }
    Ok(())
}

/// Creates `rel` under `root` one component at a time, giving new directories to `owner`.
fn make_dirs(root: &Path, rel: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::create_dir(&at) {
            Ok(()) => chown_dir(&at, owner)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", at.display()), e)),
        }
    }
    Ok(())
}

/// Hands a directory the action will write in to the uid the action runs as.
fn chown_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("handing {} to uid {uid}", dir.display()), e))?;
    }
    Ok(())
}

/// For actions that run under rexd's own uid (which owns the CAS files it hardlinks into
/// their exec roots): finds inputs whose content was written during the action, via their
/// mtime, re-hashes them, and removes any that no longer match so they are never served.
/// Returns the damaged digests.
pub fn find_modified_inputs(
    cas: &Cas,
    inputs: &[Digest],
    since: std::time::SystemTime,
) -> Vec<Digest> {
    let mut damaged = Vec::new();
    for digest in inputs {
        let path = cas.blob_path(digest);
        let modified = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if modified
            && !matches!(crate::storage::disk::hash_file(&path, digest.function()), Ok(d) if d == *digest)
        {
            tracing::error!(%digest, "an action wrote into its read-only input; removing the blob");
            cas.discard(digest);
            damaged.push(*digest);
        }
    }
    damaged
}
