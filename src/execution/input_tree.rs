//! An action's input tree, read from the CAS once, validated, and parsed into typed
//! directories: staging, the inputs' lease and the post-run input check all walk this form,
//! so no digest is parsed twice and no parse error is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::proto::remote_execution::Directory;
use crate::storage::{Cas, tree::read_message};

/// A file of an input directory.
pub struct InputFile {
    pub name: String,
    pub digest: Digest,
    pub executable: bool,
}

/// One directory of an input tree, canonical and with every digest parsed.
pub struct InputDirectory {
    pub files: Vec<InputFile>,
    /// Subdirectories: name and digest.
    pub directories: Vec<(String, Digest)>,
    /// Symlinks: name and target.
    pub symlinks: Vec<(String, String)>,
}

impl InputDirectory {
    fn parse(dir: &Directory, function: DigestFunction) -> Result<Self, Error> {
        Ok(InputDirectory {
            files: dir
                .files
                .iter()
                .map(|f| {
                    Ok(InputFile {
                        name: f.name.clone(),
                        digest: Digest::from_required(function, f.digest.as_ref(), "input file")?,
                        executable: f.is_executable,
                    })
                })
                .collect::<Result<_, Error>>()?,
            directories: dir
                .directories
                .iter()
                .map(|d| {
                    Ok((
                        d.name.clone(),
                        Digest::from_required(function, d.digest.as_ref(), "input directory")?,
                    ))
                })
                .collect::<Result<_, Error>>()?,
            symlinks: dir
                .symlinks
                .iter()
                .map(|l| (l.name.clone(), l.target.clone()))
                .collect(),
        })
    }
}

/// A whole input tree.
pub struct InputTree {
    pub root: Digest,
    /// Every directory of the tree, by digest.
    pub directories: HashMap<Digest, Arc<InputDirectory>>,
    /// Every distinct input file, sorted.
    pub files: Vec<Digest>,
}

/// Directories already read from the CAS and validated, by digest. Input trees of one build
/// share most of their directories (toolchains, external repositories), so each is read,
/// decoded and checked once rather than for every action. Bounded by an estimate of the
/// memory the decoded directories hold.
pub struct DirectoryCache {
    // A std Mutex: lookups and inserts only.
    state: std::sync::Mutex<DirectoryCacheState>,
    max_bytes: u64,
}

struct DirectoryCacheState {
    entries: lru::LruCache<Digest, Arc<InputDirectory>>,
    bytes: u64,
}

/// Memory a decoded directory holds, estimated from its encoded size: decoding roughly
/// triples it (a String and an Option per field), plus the cache entry itself.
fn decoded_bytes(digest: &Digest) -> u64 {
    digest.size().saturating_mul(3).saturating_add(256)
}

impl DirectoryCache {
    pub fn new(max_bytes: u64) -> Self {
        DirectoryCache {
            state: std::sync::Mutex::new(DirectoryCacheState {
                entries: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            max_bytes,
        }
    }

    fn get(&self, digest: &Digest) -> Option<Arc<InputDirectory>> {
        self.state.lock().unwrap().entries.get(digest).cloned()
    }

    fn insert(&self, digest: Digest, dir: InputDirectory) -> Arc<InputDirectory> {
        let dir = Arc::new(dir);
        let weight = decoded_bytes(&digest);
        if weight > self.max_bytes {
            return dir;
        }
        let mut state = self.state.lock().unwrap();
        if state.entries.put(digest, dir.clone()).is_none() {
            state.bytes += weight;
        }
        while state.bytes > self.max_bytes {
            let Some((old, _)) = state.entries.pop_lru() else {
                break;
            };
            state.bytes -= decoded_bytes(&old);
        }
        dir
    }

    /// Directories held, and their estimated bytes.
    pub fn usage(&self) -> (usize, u64) {
        let state = self.state.lock().unwrap();
        (state.entries.len(), state.bytes)
    }
}

/// Reads every directory under `root`, validating each and parsing its digests; absent
/// blobs (directories and files) are added to `missing`.
pub fn load(
    cas: &Cas,
    cache: &DirectoryCache,
    root: Digest,
    missing: &mut Vec<Digest>,
) -> Result<InputTree, Error> {
    let mut directories = HashMap::new();
    let mut pending = vec![root];
    let mut files = Vec::new();
    while let Some(digest) = pending.pop() {
        if directories.contains_key(&digest) {
            continue;
        }
        let dir = match cache.get(&digest) {
            Some(dir) => dir,
            None => {
                let Some(dir) = read_message::<Directory>(cas, &digest, "directory")? else {
                    missing.push(digest);
                    continue;
                };
                validate_directory(&dir, &digest)?;
                cache.insert(digest, InputDirectory::parse(&dir, digest.function())?)
            }
        };
        files.extend(dir.files.iter().map(|f| f.digest));
        pending.extend(dir.directories.iter().map(|(_, d)| *d));
        directories.insert(digest, dir);
    }
    files.sort_unstable();
    files.dedup();
    missing.extend(cas.find_missing(&files));
    let tree = InputTree {
        root,
        directories,
        files,
    };
    // Symlinks may climb out of their own directory, but never out of the input root.
    tree.check_symlinks(&root, 0)?;
    Ok(tree)
}

impl InputTree {
    fn check_symlinks(&self, digest: &Digest, depth: usize) -> Result<(), Error> {
        let Some(dir) = self.directories.get(digest) else {
            return Ok(());
        };
        for (name, target) in &dir.symlinks {
            check_symlink_target(name, target, depth)?;
        }
        for (_, child) in &dir.directories {
            self.check_symlinks(child, depth + 1)?;
        }
        Ok(())
    }
}

/// A symlink at `depth` directories below the root must stay inside the root.
pub fn check_symlink_target(name: &str, target: &str, depth: usize) -> Result<(), Error> {
    if target.is_empty() {
        return Err(Error::BadInput(format!(
            "symlink {name:?} has an empty target"
        )));
    }
    if target.starts_with('/') {
        return Err(Error::BadInput(format!(
            "symlink {name:?} has an absolute target {target:?}; this server disallows them"
        )));
    }
    // Saturating: no tree is that deep, but `as` would wrap a huge depth to below the root.
    let mut level = i64::try_from(depth).unwrap_or(i64::MAX);
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => level -= 1,
            _ => level = level.saturating_add(1),
        }
        if level < 0 {
            return Err(Error::BadInput(format!(
                "symlink {name:?} -> {target:?} points outside the input root"
            )));
        }
    }
    Ok(())
}

/// Entry point for the fuzzer: the canonical-form check of one Directory, with a dummy digest
/// standing in for the one it was read under (it only appears in error messages).
pub fn validate_directory_for_fuzzing(dir: &Directory) -> Result<(), Error> {
    validate_directory(dir, &Digest::empty(crate::digest::DigestFunction::Sha256))
}

/// A Directory is canonical when every list is sorted by name and no name repeats.
fn validate_directory(dir: &Directory, digest: &Digest) -> Result<(), Error> {
    let lists: [Vec<&str>; 3] = [
        dir.files.iter().map(|f| f.name.as_str()).collect(),
        dir.directories.iter().map(|d| d.name.as_str()).collect(),
        dir.symlinks.iter().map(|s| s.name.as_str()).collect(),
    ];
    let mut all = Vec::new();
    for names in &lists {
        for pair in names.windows(2) {
            if pair[0] >= pair[1] {
                return Err(Error::BadInput(format!(
                    "directory {digest} is not canonical: {:?} and {:?} are duplicated or out of order",
                    pair[0], pair[1]
                )));
            }
        }
        for name in names {
            validate_name(name, digest)?;
            all.push(*name);
        }
    }
    all.sort_unstable();
    if let Some(pair) = all.windows(2).find(|p| p[0] == p[1]) {
        return Err(Error::BadInput(format!(
            "directory {digest} names {:?} twice",
            pair[0]
        )));
    }
    Ok(())
}

fn validate_name(name: &str, digest: &Digest) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::BadInput(format!(
            "directory {digest} has an invalid entry name {name:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_cache_stays_within_its_bytes() {
        let max = 64 * 1024;
        let cache = DirectoryCache::new(max);
        for i in 0..10_000u32 {
            let dir = InputDirectory {
                files: vec![InputFile {
                    name: format!("file-{i}"),
                    digest: Digest::empty(DigestFunction::Sha256),
                    executable: false,
                }],
                directories: vec![],
                symlinks: vec![],
            };
            let encoded = format!("directory {i} with one file of some name").into_bytes();
            let digest = Digest::of(crate::digest::DigestFunction::Sha256, &encoded);
            cache.insert(digest, dir);
            assert!(cache.get(&digest).is_some(), "the newest is kept");
        }
        let (count, bytes) = cache.usage();
        assert!(bytes <= max, "{bytes} bytes held");
        assert!(count > 100 && count < 1000, "{count} directories held");
    }
}
