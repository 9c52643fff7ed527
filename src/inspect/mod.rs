//! What an action is, read back from a CAS for people: its Action, Command and input tree
//! ([`ActionView`]), and what differs between two of them ([`diff`]). The same code serves
//! the web UI, which reads the server's own store ([`local`]), and `rexd action`, which
//! reads a server over REAPI; each supplies a [`BlobSource`].

pub mod diff;
pub mod local;

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use prost::Message;

use crate::digest::Digest;
use crate::error::Error;
use crate::proto::remote_execution::{Action, Command, Directory};

/// Most directories one view walks; a larger tree is shown cut short, with a note.
pub const MAX_DIRECTORIES: usize = 10_000;
/// Most input paths one view lists (and a diff compares).
pub const MAX_INPUTS: usize = 200_000;

/// Where blobs are read from.
pub trait BlobSource: Sync {
    /// The blob, or `None` if the store does not hold it.
    fn read(&self, digest: &Digest) -> impl Future<Output = Result<Option<Bytes>, Error>> + Send;

    /// Every directory of the tree under `root` the store holds (at most
    /// [`MAX_DIRECTORIES`]). The default reads them one by one; a source with GetTree
    /// does better.
    fn directories(
        &self,
        root: &Digest,
    ) -> impl Future<Output = Result<HashMap<Digest, Directory>, Error>> + Send {
        async move {
            let mut found = HashMap::new();
            let mut queue = VecDeque::from([*root]);
            while let Some(digest) = queue.pop_front() {
                if found.len() >= MAX_DIRECTORIES || found.contains_key(&digest) {
                    continue;
                }
                let Some(dir) = read_proto::<Directory, _>(self, &digest, "directory").await?
                else {
                    continue;
                };
                for child in &dir.directories {
                    if let Some(d) = child.digest.as_ref() {
                        queue.push_back(Digest::from_proto(root.function(), d)?);
                    }
                }
                found.insert(digest, dir);
            }
            Ok(found)
        }
    }
}

/// Reads and decodes a proto blob; `None` if absent.
pub async fn read_proto<M: Message + Default, S: BlobSource + ?Sized>(
    source: &S,
    digest: &Digest,
    what: &str,
) -> Result<Option<M>, Error> {
    let Some(data) = source.read(digest).await? else {
        return Ok(None);
    };
    M::decode(data)
        .map(Some)
        .map_err(|e| Error::BadInput(format!("{what} {digest} is not a valid proto: {e}")))
}

/// An input of the action, by its path under the input root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    File {
        digest: Digest,
        executable: bool,
    },
    Symlink {
        target: String,
    },
    /// A directory the store does not hold: its contents are unknown.
    MissingDirectory {
        digest: Digest,
    },
}

/// An action as stored: what it runs and on what.
#[derive(Clone, Debug)]
pub struct ActionView {
    pub digest: Digest,
    pub action: Action,
    /// `None` if the store no longer holds it.
    pub command: Option<Command>,
    pub input_root: Option<Digest>,
    /// The input tree's directories the store holds.
    pub directories: HashMap<Digest, Directory>,
}

impl ActionView {
    /// Reads the action and everything it names but its files' contents; NOT_FOUND if the
    /// store lacks the Action itself.
    pub async fn load<S: BlobSource>(source: &S, digest: Digest) -> Result<Self, Error> {
        let function = digest.function();
        let action: Action = read_proto(source, &digest, "action")
            .await?
            .ok_or_else(|| Error::Absent(format!("the CAS does not hold the action {digest}")))?;
        let command = match &action.command_digest {
            Some(d) => read_proto(source, &Digest::from_proto(function, d)?, "command").await?,
            None => None,
        };
        let input_root = action
            .input_root_digest
            .as_ref()
            .map(|d| Digest::from_proto(function, d))
            .transpose()?;
        let directories = match &input_root {
            Some(root) => source.directories(root).await?,
            None => HashMap::new(),
        };
        Ok(ActionView {
            digest,
            action,
            command,
            input_root,
            directories,
        })
    }

    /// Every input by path, walking the tree from the root.
    pub fn inputs(&self) -> BTreeMap<String, Input> {
        let mut out = BTreeMap::new();
        let Some(root) = self.input_root else {
            return out;
        };
        // Iterative, and capped: a tree that shares subdirectories can name far more paths
        // than it has directories.
        let mut stack = vec![(root, String::new())];
        while let Some((digest, prefix)) = stack.pop() {
            if out.len() >= MAX_INPUTS {
                break;
            }
            let function = digest.function();
            let Some(dir) = self.directories.get(&digest) else {
                out.insert(prefix, Input::MissingDirectory { digest });
                continue;
            };
            let join = |name: &str| {
                if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                }
            };
            for f in &dir.files {
                if let Some(Ok(d)) = f.digest.as_ref().map(|d| Digest::from_proto(function, d)) {
                    let input = Input::File {
                        digest: d,
                        executable: f.is_executable,
                    };
                    out.insert(join(&f.name), input);
                }
            }
            for s in &dir.symlinks {
                let target = s.target.clone();
                out.insert(join(&s.name), Input::Symlink { target });
            }
            for sub in &dir.directories {
                if let Some(Ok(d)) = sub.digest.as_ref().map(|d| Digest::from_proto(function, d)) {
                    stack.push((d, join(&sub.name)));
                }
            }
        }
        out
    }

    /// The environment, by name.
    pub fn environment(&self) -> BTreeMap<String, String> {
        self.command
            .iter()
            .flat_map(|c| &c.environment_variables)
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect()
    }

    /// The platform properties, from the Action (v2.2) or else the Command.
    pub fn platform(&self) -> BTreeMap<String, String> {
        #[allow(deprecated)]
        let platform = self
            .action
            .platform
            .as_ref()
            .or(self.command.as_ref().and_then(|c| c.platform.as_ref()));
        platform
            .iter()
            .flat_map(|p| &p.properties)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    }

    pub fn arguments(&self) -> &[String] {
        self.command.as_ref().map_or(&[], |c| &c.arguments)
    }

    /// The declared output paths, sorted.
    pub fn output_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .command
            .iter()
            .flat_map(crate::execution::spec::declared_outputs)
            .cloned()
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Whether the walk stopped at [`MAX_DIRECTORIES`].
    pub fn tree_cut_short(&self) -> bool {
        self.directories.len() >= MAX_DIRECTORIES
    }
}
