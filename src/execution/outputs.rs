//! Output collection: after an action ran, moves the files it declared into the CAS and
//! describes them in an ActionResult (files, directories as Tree messages, symlinks).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use prost::Message;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::execution::spec::resolve_relative;
use crate::proto::remote_execution::{
    ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, SymlinkNode, Tree, command::OutputDirectoryFormat,
};
use crate::storage::{Cas, Unsynced};

/// What the command said about an output path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Declared {
    File,
    Directory,
    /// A v2.1 `output_paths` entry: whatever the action made.
    Any,
}

/// Collects every declared output under `exec_root` into `result`; returns the total size
/// of the output files. They become durable with `unsynced`.
pub fn collect(
    cas: &Cas,
    unsynced: &mut Unsynced,
    function: DigestFunction,
    exec_root: &Path,
    command: &Command,
    result: &mut ActionResult,
) -> Result<u64, Error> {
    let mut total = 0u64;
    let format = OutputDirectoryFormat::try_from(command.output_directory_format)
        .unwrap_or(OutputDirectoryFormat::TreeOnly);
    #[allow(deprecated)]
    let declared: Vec<(&String, Declared)> = if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .map(|p| (p, Declared::File))
            .chain(
                command
                    .output_directories
                    .iter()
                    .map(|p| (p, Declared::Directory)),
            )
            .collect()
    } else {
        command
            .output_paths
            .iter()
            .map(|p| (p, Declared::Any))
            .collect()
    };
    for (path, declared) in declared {
        let rel = resolve_relative(&command.working_directory, path).ok_or_else(|| {
            Error::BadInput(format!("output path {path:?} leaves the input root"))
        })?;
        let full = exec_root.join(&rel);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("inspecting output {path:?}"), e)),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&full)
                .map_err(|e| Error::io(format!("reading symlink {path:?}"), e))?;
            let symlink = OutputSymlink {
                path: path.clone(),
                target: target.to_string_lossy().into_owned(),
                node_properties: None,
            };
            #[allow(deprecated)]
            match declared {
                Declared::File => result.output_file_symlinks.push(symlink.clone()),
                Declared::Directory => result.output_directory_symlinks.push(symlink.clone()),
                Declared::Any => {}
            }
            result.output_symlinks.push(symlink);
        } else if kind.is_file() {
            if declared == Declared::Directory {
                return Err(Error::Unsatisfiable(format!(
                    "output directory {path:?} is a regular file"
                )));
            }
            let digest = cas.adopt_file(&full, function, unsynced)?;
            cas.pin([&digest]);
            total += digest.size();
            result.output_files.push(OutputFile {
                path: path.clone(),
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                contents: Default::default(),
                node_properties: None,
            });
        } else if kind.is_dir() {
            if declared == Declared::File {
                return Err(Error::Unsatisfiable(format!(
                    "output file {path:?} is a directory"
                )));
            }
            let mut tree = Tree::default();
            let root = directory_of(
                cas,
                unsynced,
                function,
                &full,
                &mut tree.children,
                &mut total,
            )?;
            tree.root = Some(root.clone());
            // Each distinct child once, as the spec asks of Tree.children.
            let mut seen = std::collections::HashSet::new();
            tree.children
                .retain(|d| seen.insert(Digest::of(function, &d.encode_to_vec())));
            let mut output = OutputDirectory {
                path: path.clone(),
                ..Default::default()
            };
            if format != OutputDirectoryFormat::DirectoryOnly {
                output.tree_digest = Some(store_message(cas, function, &tree)?.to_proto());
            }
            if format != OutputDirectoryFormat::TreeOnly {
                for dir in &tree.children {
                    store_message(cas, function, dir)?;
                }
                output.root_directory_digest =
                    Some(store_message(cas, function, &root)?.to_proto());
            }
            result.output_directories.push(output);
        }
    }
    Ok(total)
}

/// Builds the Directory message for `path`, storing its files and pushing every descendant
/// Directory (not `path`'s own) onto `children`.
fn directory_of(
    cas: &Cas,
    unsynced: &mut Unsynced,
    function: DigestFunction,
    path: &Path,
    children: &mut Vec<Directory>,
    total: &mut u64,
) -> Result<Directory, Error> {
    let mut entries: Vec<(String, fs::FileType, fs::Metadata)> = Vec::new();
    let listing =
        fs::read_dir(path).map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
    for entry in listing {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| Error::Unsatisfiable(format!("output name {n:?} is not valid UTF-8")))?;
        let meta = entry
            .metadata()
            .map_err(|e| Error::io(format!("inspecting {}", entry.path().display()), e))?;
        entries.push((name, meta.file_type(), meta));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut dir = Directory::default();
    for (name, kind, meta) in entries {
        let at = path.join(&name);
        if kind.is_symlink() {
            let target = fs::read_link(&at)
                .map_err(|e| Error::io(format!("reading symlink {}", at.display()), e))?;
            dir.symlinks.push(SymlinkNode {
                name,
                target: target.to_string_lossy().into_owned(),
                node_properties: None,
            });
        } else if kind.is_dir() {
            let child = directory_of(cas, unsynced, function, &at, children, total)?;
            let digest = Digest::of(function, &child.encode_to_vec());
            children.push(child);
            dir.directories.push(DirectoryNode {
                name,
                digest: Some(digest.to_proto()),
            });
        } else if kind.is_file() {
            let digest = cas.adopt_file(&at, function, unsynced)?;
            cas.pin([&digest]);
            *total += digest.size();
            dir.files.push(FileNode {
                name,
                digest: Some(digest.to_proto()),
                is_executable: meta.permissions().mode() & 0o111 != 0,
                node_properties: None,
            });
        }
        // Sockets, fifos and devices have no REAPI form; they are left out.
    }
    Ok(dir)
}

/// Stores an encoded message in the CAS and returns its digest.
pub fn store_message(
    cas: &Cas,
    function: DigestFunction,
    message: &impl Message,
) -> Result<Digest, Error> {
    let data = message.encode_to_vec();
    let digest = Digest::of(function, &data);
    cas.put(&digest, &data)?;
    cas.pin([&digest]);
    Ok(digest)
}
