//! The directories a slot's exec root keeps between actions.
//!
//! Emptying an exec root used to remove every directory of the action's input tree, and the
//! next action made most of the same directories again. On ext4 without a journal, making a
//! directory allocates an inode, and the allocator scans recently deleted inodes every time:
//! that mkdir and rmdir churn was a fifth of rexd's own CPU in a remote C build. So a slot
//! keeps its directories: clean-up removes only files and symlinks, staging reuses each
//! directory the next input tree has again, and removes the others before the action runs.
//! The action sees exactly its input tree, as if every directory were new: empty where the
//! tree says so, with the mode a fresh one gets.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The empty directories left in an exec root, relative to it, parents before children.
#[derive(Default, Debug)]
pub struct Skeleton {
    dirs: Vec<PathBuf>,
}

impl Skeleton {
    /// Empties a worker's exec root for the next action but for its directories, which it
    /// returns for the next staging to reuse; or moves it to `keep` (a failed action's directory
    /// kept for debugging) and starts a fresh one.
    pub fn reset(dir: &Path, keep: Option<&Path>) -> Skeleton {
        let root = dir.join("root");
        let result = match keep {
            Some(keep) => std::fs::rename(&root, keep).map(|()| Skeleton::default()),
            None => Skeleton::empty(&root),
        };
        let e = match result {
            Ok(skeleton) => return skeleton,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Skeleton::default(),
            Err(e) => e,
        };
        // Whatever stays must not leak into the next action: move it aside (cleared at the next
        // start if it cannot be removed now); the next action gets a fresh root.
        tracing::warn!(dir = %root.display(), error = %e, "cannot clean an action directory; starting afresh");
        let trash = dir.with_file_name(format!("trash-{}", uuid::Uuid::new_v4()));
        if std::fs::rename(&root, &trash).is_ok() {
            let _ = std::fs::remove_dir_all(&trash);
        }
        Skeleton::default()
    }

    /// Empties `root` of everything but directories, gives each kept directory `root`'s mode
    /// back (an action may have changed it), and returns what it kept. On an error the
    /// caller must start from an empty root instead.
    pub fn empty(root: &Path) -> io::Result<Skeleton> {
        let mode = fs::symlink_metadata(root)?.permissions().mode() & 0o7777;
        let mut skeleton = Skeleton::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let dir = root.join(&rel);
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                if !entry.file_type()?.is_dir() {
                    fs::remove_file(&path)?;
                    continue;
                }
                let perms = entry.metadata()?.permissions();
                if perms.mode() & 0o7777 != mode {
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                }
                let child = rel.join(entry.file_name());
                skeleton.dirs.push(child.clone());
                pending.push(child);
            }
        }
        Ok(skeleton)
    }

    /// How many directories it holds.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Removes, under `root`, every kept directory that `used` (the new action's directories,
    /// relative to `root`) does not name. Children go before their parents; a directory the
    /// new tree uses has all its parents in the tree too, so none of them is removed.
    pub fn prune(
        self,
        root: &Path,
        used: &std::collections::HashSet<PathBuf>,
    ) -> Result<usize, Error> {
        let mut removed = 0;
        for rel in self.dirs.iter().rev() {
            if used.contains(rel) {
                continue;
            }
            let path = root.join(rel);
            fs::remove_dir(&path)
                .map_err(|e| Error::io(format!("removing unused {}", path.display()), e))?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn tree(root: &Path) {
        for dir in ["a/b/c", "a/d", "e"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("a/b/c/file"), "x").unwrap();
        fs::write(root.join("top"), "y").unwrap();
        std::os::unix::fs::symlink("a", root.join("e/link")).unwrap();
    }

    #[test]
    fn emptying_keeps_only_directories_with_the_roots_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        tree(&root);
        fs::set_permissions(root.join("a/d"), fs::Permissions::from_mode(0o500)).unwrap();
        let skeleton = Skeleton::empty(&root).unwrap();
        let mut kept: Vec<_> = skeleton
            .dirs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["a", "a/b", "a/b/c", "a/d", "e"]);
        assert!(!root.join("top").exists());
        assert!(!root.join("a/b/c/file").exists());
        assert!(fs::symlink_metadata(root.join("e/link")).is_err());
        let root_mode = fs::metadata(&root).unwrap().permissions().mode() & 0o7777;
        let d_mode = fs::metadata(root.join("a/d")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(d_mode, root_mode);
    }

    #[test]
    fn pruning_removes_what_the_next_tree_does_not_use() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        tree(&root);
        let skeleton = Skeleton::empty(&root).unwrap();
        let used: HashSet<PathBuf> = ["a", "a/b"].iter().map(PathBuf::from).collect();
        assert_eq!(skeleton.prune(&root, &used).unwrap(), 3);
        assert!(root.join("a/b").is_dir());
        for gone in ["a/b/c", "a/d", "e"] {
            assert!(!root.join(gone).exists(), "{gone} should be gone");
        }
    }
}
