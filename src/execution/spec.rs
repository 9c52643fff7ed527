//! Loads what an Execute request names (Action, Command, the input tree) from the CAS and
//! checks it, so that everything past this point works on a complete, canonical action.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::error::Error;
use crate::proto::remote_execution::{Action, Command, Directory};
use crate::storage::{Cas, tree::read_message};

/// An action ready to be scheduled: decoded, validated, with every input present.
pub struct ActionSpec {
    pub instance: String,
    pub action_digest: Digest,
    pub action: Action,
    pub command: Command,
    pub input_root: Digest,
    /// Every directory of the input tree, by digest.
    pub directories: Arc<HashMap<Digest, Arc<Directory>>>,
    pub timeout: Duration,
    /// Platform properties the action asks for (Action.platform, else Command.platform).
    pub platform: BTreeMap<String, String>,
    /// Sandbox settings derived from the platform properties and the instance's config.
    pub options: crate::execution::sandbox::ActionOptions,
}

impl ActionSpec {
    /// Whether the result may be cached and identical in-flight runs merged.
    pub fn cacheable(&self) -> bool {
        !self.action.do_not_cache
    }
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
    entries: lru::LruCache<Digest, Arc<Directory>>,
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

    fn get(&self, digest: &Digest) -> Option<Arc<Directory>> {
        self.state.lock().unwrap().entries.get(digest).cloned()
    }

    fn insert(&self, digest: Digest, dir: Directory) -> Arc<Directory> {
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

/// Limits that come from the server's configuration.
pub struct SpecLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// Reads and validates the action. Missing blobs anywhere are collected and reported together
/// as one FAILED_PRECONDITION.
pub fn load(
    cas: &Cas,
    cache: &DirectoryCache,
    instance: &str,
    action_digest: Digest,
    limits: &SpecLimits,
) -> Result<ActionSpec, Error> {
    let function = action_digest.function();
    let action: Action = read_message(cas, &action_digest, "action")?
        .ok_or_else(|| Error::MissingBlobs(vec![action_digest]))?;
    let command_digest =
        Digest::from_required(function, action.command_digest.as_ref(), "command")?;
    let input_root =
        Digest::from_required(function, action.input_root_digest.as_ref(), "input root")?;
    let mut missing = Vec::new();
    let command: Option<Command> = read_message(cas, &command_digest, "command")?;
    if command.is_none() {
        missing.push(command_digest);
    }
    let directories = load_tree(cas, cache, &input_root, &mut missing)?;
    if !missing.is_empty() {
        // One violation per blob: a missing directory may be named by several parents,
        // and the same bytes may serve as a file, a directory and the command.
        missing.sort_unstable();
        missing.dedup();
        return Err(Error::MissingBlobs(missing));
    }
    let command = command.expect("checked above");
    validate_command(&command)?;
    let timeout = match &action.timeout {
        None => limits.default_timeout,
        Some(t) if t.seconds < 0 || t.nanos < 0 => {
            return Err(Error::InvalidArgument(
                "action timeout must not be negative".into(),
            ));
        }
        Some(t) if t.seconds == 0 && t.nanos == 0 => limits.default_timeout,
        Some(t) => Duration::new(t.seconds as u64, t.nanos as u32),
    };
    if timeout > limits.max_timeout {
        return Err(Error::InvalidArgument(format!(
            "action timeout of {}s is over this server's maximum of {}s",
            timeout.as_secs_f64(),
            limits.max_timeout.as_secs()
        )));
    }
    #[allow(deprecated)]
    let platform_source = action.platform.as_ref().or(command.platform.as_ref());
    let mut platform = BTreeMap::new();
    for p in platform_source
        .map(|p| p.properties.as_slice())
        .unwrap_or_default()
    {
        platform.insert(p.name.clone(), p.value.clone());
    }
    Ok(ActionSpec {
        instance: instance.to_string(),
        action_digest,
        action,
        command,
        input_root,
        directories: Arc::new(directories),
        timeout,
        platform,
        options: Default::default(),
    })
}

/// Reads every directory under `root`, validating each; absent blobs (directories and files)
/// are added to `missing`.
fn load_tree(
    cas: &Cas,
    cache: &DirectoryCache,
    root: &Digest,
    missing: &mut Vec<Digest>,
) -> Result<HashMap<Digest, Arc<Directory>>, Error> {
    let function = root.function();
    let mut directories = HashMap::new();
    let mut pending = vec![*root];
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
                cache.insert(digest, dir)
            }
        };
        for f in &dir.files {
            files.push(Digest::from_required(
                function,
                f.digest.as_ref(),
                "input file",
            )?);
        }
        for d in &dir.directories {
            pending.push(Digest::from_required(
                function,
                d.digest.as_ref(),
                "input directory",
            )?);
        }
        directories.insert(digest, dir);
    }
    files.sort_unstable();
    files.dedup();
    missing.extend(cas.find_missing(&files));
    // Symlinks may climb out of their own directory, but never out of the input root.
    check_symlinks(&directories, root, 0)?;
    Ok(directories)
}

fn check_symlinks(
    directories: &HashMap<Digest, Arc<Directory>>,
    digest: &Digest,
    depth: usize,
) -> Result<(), Error> {
    let Some(dir) = directories.get(digest) else {
        return Ok(());
    };
    for link in &dir.symlinks {
        check_symlink_target(&link.name, &link.target, depth)?;
    }
    for child in &dir.directories {
        let child =
            Digest::from_required(digest.function(), child.digest.as_ref(), "input directory")?;
        check_symlinks(directories, &child, depth + 1)?;
    }
    Ok(())
}

/// A symlink at `depth` directories below the root must stay inside the root.
pub fn check_symlink_target(name: &str, target: &str, depth: usize) -> Result<(), Error> {
    if target.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "symlink {name:?} has an empty target"
        )));
    }
    if target.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
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
            return Err(Error::InvalidArgument(format!(
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
                return Err(Error::InvalidArgument(format!(
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
        return Err(Error::InvalidArgument(format!(
            "directory {digest} names {:?} twice",
            pair[0]
        )));
    }
    Ok(())
}

fn validate_name(name: &str, digest: &Digest) -> Result<(), Error> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "directory {digest} has an invalid entry name {name:?}"
        )));
    }
    Ok(())
}

/// Output and working-directory paths are relative, with no empty components; `..` is
/// allowed only where the spec allows it (output_paths), and checked by the caller.
fn validate_command(command: &Command) -> Result<(), Error> {
    if command.arguments.is_empty() {
        return Err(Error::InvalidArgument("command has no arguments".into()));
    }
    if command.working_directory.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "working_directory {:?} must be relative to the input root",
            command.working_directory
        )));
    }
    if resolve_relative("", &command.working_directory).is_none() {
        return Err(Error::InvalidArgument(format!(
            "working_directory {:?} leaves the input root",
            command.working_directory
        )));
    }
    for path in declared_outputs(command) {
        if path.starts_with('/') || resolve_relative(&command.working_directory, path).is_none() {
            return Err(Error::InvalidArgument(format!(
                "output path {path:?} must be relative and stay inside the input root"
            )));
        }
    }
    for var in &command.environment_variables {
        if var.name.is_empty()
            || var.name.contains('=')
            || var.name.contains('\0')
            || var.value.contains('\0')
        {
            return Err(Error::InvalidArgument(format!(
                "invalid environment variable name {:?}",
                var.name
            )));
        }
    }
    Ok(())
}

/// Every output path the command declares, in the v2.0 and v2.1 fields alike.
pub fn declared_outputs(command: &Command) -> impl Iterator<Item = &String> {
    #[allow(deprecated)]
    command
        .output_files
        .iter()
        .chain(&command.output_directories)
        .chain(&command.output_paths)
}

/// Joins `path` onto `base` (both relative to the input root), resolving `.` and `..`;
/// `None` if the result would leave the root. The empty string is the root itself.
pub fn resolve_relative(base: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(path.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_cache_stays_within_its_bytes() {
        let max = 64 * 1024;
        let cache = DirectoryCache::new(max);
        for i in 0..10_000u32 {
            let dir = Directory {
                files: vec![crate::proto::remote_execution::FileNode {
                    name: format!("file-{i}"),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let encoded = prost::Message::encode_to_vec(&dir);
            let digest = Digest::of(crate::digest::DigestFunction::Sha256, &encoded);
            cache.insert(digest, dir);
            assert!(cache.get(&digest).is_some(), "the newest is kept");
        }
        let (count, bytes) = cache.usage();
        assert!(bytes <= max, "{bytes} bytes held");
        assert!(count > 100 && count < 1000, "{count} directories held");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(resolve_relative("", "a/b").as_deref(), Some("a/b"));
        assert_eq!(resolve_relative("a/b", "../c").as_deref(), Some("a/c"));
        assert_eq!(resolve_relative("a/b/c", ".").as_deref(), Some("a/b/c"));
        assert_eq!(
            resolve_relative("a/b/c", "../../../x").as_deref(),
            Some("x")
        );
        assert_eq!(resolve_relative("a", "../..").as_deref(), None);
        assert_eq!(resolve_relative("", "").as_deref(), Some(""));
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target("l", "a/b", 0).is_ok());
        assert!(check_symlink_target("l", "../x", 1).is_ok());
        assert!(check_symlink_target("l", "../x", 0).is_err());
        assert!(check_symlink_target("l", "a/../../x", 0).is_err());
        assert!(check_symlink_target("l", "/etc/passwd", 3).is_err());
        assert!(check_symlink_target("l", "a/../..", i64::MAX as usize).is_ok());
        assert!(check_symlink_target("l", "../x", usize::MAX).is_ok());
    }
}
