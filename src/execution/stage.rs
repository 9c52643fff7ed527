//! Input staging: materialises an action's input tree in a fresh directory by hardlinking
//! files out of the CAS (copying where a link is refused), and creates the parents of its
//! declared outputs.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
    /// Directories the exec root kept from the slot's last action, and how many of them
    /// this tree did not use (removed before the action ran).
    pub kept_directories: usize,
    pub pruned_directories: usize,
}

/// Every directory staging makes for this action, relative to the exec root: the input
/// tree's, the working directory and the parents of the declared outputs. A slot's kept
/// directories outside this set are removed before staging.
pub fn directories_of(inputs: &InputTree, command: &Command) -> Result<HashSet<PathBuf>, Error> {
    let mut dirs = HashSet::new();
    let mut stack = vec![(inputs.root, PathBuf::new())];
    while let Some((digest, rel)) = stack.pop() {
        let dir = inputs
            .directories
            .get(&digest)
            .ok_or_else(|| Error::Bug(format!("directory {digest} was not loaded")))?;
        for (name, sub) in &dir.directories {
            let sub_rel = rel.join(name);
            dirs.insert(sub_rel.clone());
            stack.push((*sub, sub_rel));
        }
    }
    for rel in output_parents(command) {
        let mut at = PathBuf::new();
        for part in rel.components() {
            at.push(part);
            dirs.insert(at.clone());
        }
    }
    Ok(dirs)
}

/// Materialises the input tree (already validated and loaded) into `dest`, which must
/// exist and hold nothing but empty directories of this tree (a slot's kept ones, pruned to
/// [`directories_of`] it).
pub fn stage_tree(
    cas: &Cas,
    exec_cache: &ExecutableCache,
    inputs: &InputTree,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<StageStats, Error> {
    let mut stats = StageStats::default();
    chown_dir(dest, owner)?;
    let mut stack = vec![(inputs.root, PathBuf::new())];
    while let Some((digest, rel)) = stack.pop() {
        let path = dest.join(&rel);
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
            let sub_rel = rel.join(name);
            make_dir(&dest.join(&sub_rel), owner)?;
            stack.push((*sub, sub_rel));
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
    for rel in output_parents(command) {
        let mut at = exec_root.to_path_buf();
        for part in rel.components() {
            at.push(part);
            make_dir(&at, owner)?;
        }
    }
    Ok(())
}

/// The working directory and the parent of each declared output, relative to the exec root.
fn output_parents(command: &Command) -> impl Iterator<Item = PathBuf> + '_ {
    let parents = crate::execution::spec::declared_outputs(command).filter_map(|output| {
        let rel = crate::execution::spec::resolve_relative(&command.working_directory, output)?;
        Path::new(&rel).parent().map(Path::to_path_buf)
    });
    std::iter::once(PathBuf::from(&command.working_directory)).chain(parents)
}

/// Creates `at` for `owner`, or keeps it where the slot kept it (already theirs).
fn make_dir(at: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    match fs::create_dir(at) {
        Ok(()) => chown_dir(at, owner),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("creating {}", at.display()), e)),
    }
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
