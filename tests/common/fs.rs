//! Copying a fixture directory into a test's scratch space, for the Bazel and BuildStream
//! workspaces alike.

use std::fs;
use std::path::Path;

/// Copies `src` into the existing directory `dst`, recursively, keeping permissions (a
/// fixture's scripts stay executable) and symlinks. Skips what a build left in the fixture
/// directory if someone built there by hand: BuildStream's `sysroot` and `.bst`, Bazel's
/// `bazel-*` convenience links.
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let name = entry.file_name();
        let to = dst.join(&name);
        if name == "sysroot" || name == ".bst" || name.to_string_lossy().starts_with("bazel-") {
            continue;
        }
        if ty.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &to)?;
        } else if ty.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&entry.path(), &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}
