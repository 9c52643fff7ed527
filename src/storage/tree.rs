//! Walks over Directory trees stored in the CAS: GetTree pages, and the completeness check
//! that keeps an action-cache entry from being served when any blob it names is gone.

use std::collections::HashSet;

use prost::Message;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::remote_execution::{ActionResult, Directory, Tree};
use crate::storage::Cas;

/// Reads and decodes a proto blob; `None` if the blob is absent.
pub fn read_message<M: Message + Default>(
    cas: &Cas,
    digest: &Digest,
    what: &str,
) -> Result<Option<M>, Error> {
    let Some(data) = cas.read(digest)? else {
        return Ok(None);
    };
    M::decode(data)
        .map(Some)
        .map_err(|e| Error::BadInput(format!("{what} {digest} is not a valid proto: {e}")))
}

/// One page of a GetTree answer.
pub struct TreePage {
    pub directories: Vec<Directory>,
    /// Opaque token that resumes after this page; empty on the last page.
    pub next_page_token: String,
}

/// The directories of the tree under `root`, breadth first, each distinct directory once,
/// cut into pages of at most `page_size` directories and `max_bytes` encoded bytes, starting
/// where `token` says. Missing subdirectories are left out, as the spec allows; a missing
/// root is NOT_FOUND.
pub fn tree_pages(
    cas: &Cas,
    root: &Digest,
    page_size: usize,
    max_bytes: usize,
    token: &str,
) -> Result<Vec<TreePage>, Error> {
    let skip: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Error::BadInput(format!("invalid page_token {token:?}")))?
    };
    let all = walk_tree(cas, root)?;
    if skip > all.len() {
        return Err(Error::BadInput(format!(
            "page_token {token:?} is past the end of the tree"
        )));
    }
    let mut pages = Vec::new();
    let mut current = TreePage {
        directories: Vec::new(),
        next_page_token: String::new(),
    };
    let mut bytes = 0usize;
    for (position, dir) in all.into_iter().enumerate().skip(skip) {
        let len = dir.encoded_len();
        if !current.directories.is_empty()
            && (current.directories.len() >= page_size || bytes + len > max_bytes)
        {
            current.next_page_token = position.to_string();
            pages.push(std::mem::replace(
                &mut current,
                TreePage {
                    directories: Vec::new(),
                    next_page_token: String::new(),
                },
            ));
            bytes = 0;
        }
        bytes += len;
        current.directories.push(dir);
    }
    pages.push(current);
    Ok(pages)
}

/// Breadth-first list of the distinct directories present under `root`.
fn walk_tree(cas: &Cas, root: &Digest) -> Result<Vec<Directory>, Error> {
    let function = root.function();
    let mut seen = HashSet::from([*root]);
    let mut queue = std::collections::VecDeque::from([*root]);
    let mut out = Vec::new();
    while let Some(digest) = queue.pop_front() {
        let Some(dir) = read_message::<Directory>(cas, &digest, "directory")? else {
            if digest == *root {
                return Err(Error::Absent(format!(
                    "root directory {digest} is not in the CAS"
                )));
            }
            continue;
        };
        for child in &dir.directories {
            let child = Digest::from_required(function, child.digest.as_ref(), "subdirectory")?;
            if seen.insert(child) {
                queue.push_back(child);
            }
        }
        out.push(dir);
    }
    Ok(out)
}

/// Every blob `result` names, reading its output trees from `cas` to find their files; trees
/// (or Directory blobs) that are absent or do not decode come back in the second list, since
/// what they name cannot be known.
pub fn blobs_of_result(
    cas: &Cas,
    function: DigestFunction,
    result: &ActionResult,
) -> Result<(Vec<Digest>, Vec<Digest>), Error> {
    let mut named = Vec::new();
    let mut unreadable = Vec::new();
    for file in &result.output_files {
        named.push(Digest::from_required(
            function,
            file.digest.as_ref(),
            "output file",
        )?);
    }
    for d in [&result.stdout_digest, &result.stderr_digest]
        .into_iter()
        .flatten()
    {
        named.push(Digest::from_proto(function, d)?);
    }
    for out in &result.output_directories {
        if let Some(tree_digest) = &out.tree_digest {
            let tree_digest = Digest::from_proto(function, tree_digest)?;
            let files = read_usable::<Tree>(cas, &tree_digest)?.and_then(|tree| {
                tree.root
                    .iter()
                    .chain(&tree.children)
                    .flat_map(|d| &d.files)
                    .map(|f| Digest::from_required(function, f.digest.as_ref(), "tree file"))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
            });
            match files {
                Some(files) => {
                    named.push(tree_digest);
                    named.extend(files);
                }
                None => unreadable.push(tree_digest),
            }
        }
        if let Some(root) = &out.root_directory_digest {
            let root = Digest::from_proto(function, root)?;
            walk_directory_tree(cas, &root, &mut named, &mut unreadable)?;
        }
    }
    Ok((named, unreadable))
}

/// The blobs `result` names that `cas` lacks: a result missing any is not to be served.
pub fn missing_blobs_of_result(
    cas: &Cas,
    function: DigestFunction,
    result: &ActionResult,
) -> Result<Vec<Digest>, Error> {
    let (named, mut missing) = blobs_of_result(cas, function, result)?;
    missing.extend(cas.find_missing(&named));
    Ok(missing)
}

/// A proto blob that an action result points at, or `None` if it is absent or does not decode.
/// A stored result is client data: a garbled tree in it makes the result unusable (a miss,
/// which the client repairs by running the action again), not the lookup an error.
fn read_usable<M: Message + Default>(cas: &Cas, digest: &Digest) -> Result<Option<M>, Error> {
    match read_message::<M>(cas, digest, "output tree") {
        Err(Error::BadInput(why)) => {
            tracing::debug!(%digest, %why, "action result names an undecodable tree");
            Ok(None)
        }
        other => other,
    }
}

/// Blobs missing (or unusable, reported as missing) under a tree stored as separate Directory
/// blobs.
pub fn missing_in_directory_tree(cas: &Cas, root: &Digest) -> Result<Vec<Digest>, Error> {
    let (mut named, mut missing) = (Vec::new(), Vec::new());
    walk_directory_tree(cas, root, &mut named, &mut missing)?;
    missing.extend(cas.find_missing(&named));
    Ok(missing)
}

/// Adds to `named` the Directory blobs under `root` (itself first) and their files; a
/// Directory that is absent or does not decode goes to `unreadable` instead.
fn walk_directory_tree(
    cas: &Cas,
    root: &Digest,
    named: &mut Vec<Digest>,
    unreadable: &mut Vec<Digest>,
) -> Result<(), Error> {
    let function = root.function();
    let mut seen = HashSet::from([*root]);
    let mut stack = vec![*root];
    while let Some(digest) = stack.pop() {
        let parsed = read_usable::<Directory>(cas, &digest)?.and_then(|dir| {
            let files = dir
                .files
                .iter()
                .map(|f| Digest::from_required(function, f.digest.as_ref(), "file"))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let children = dir
                .directories
                .iter()
                .map(|d| Digest::from_required(function, d.digest.as_ref(), "subdirectory"))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Some((files, children))
        });
        let Some((files, children)) = parsed else {
            unreadable.push(digest);
            continue;
        };
        named.push(digest);
        named.extend(files);
        for child in children {
            if seen.insert(child) {
                stack.push(child);
            }
        }
    }
    Ok(())
}
