//! `rexd action rerun`: fetch an action's inputs from the server, run it here in the same
//! slot code a worker uses, and compare what it made with the cached result, file by file.
//! An output that differs is how a team finds a non-hermetic action.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::{Client, ServerArgs};
use crate::config::{Config, InstanceConfig, SandboxBackend, SandboxMode, Settings};
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::execution::{spec, worker::Slots};
use crate::inspect::read_proto;
use crate::proto::remote_execution::{ActionResult, ExecutedActionMetadata, Tree};

/// Rounds of "load, fetch what is missing"; each reveals more of a tree GetTree left out.
const MAX_FETCH_ROUNDS: usize = 64;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SandboxChoice {
    Host,
    Chroot,
    None,
}

pub async fn rerun(
    args: &ServerArgs,
    digest: Digest,
    dir: Option<PathBuf>,
    choice: SandboxChoice,
) -> Result<u8, Error> {
    let scratch = match &dir {
        Some(_) => None,
        None => {
            Some(tempfile::tempdir().map_err(|e| Error::io("creating a temporary directory", e))?)
        }
    };
    let dir = dir.unwrap_or_else(|| scratch.as_ref().expect("made above").path().to_path_buf());
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let settings = settings(args, &dir, choice)?;
    let client = Client::connect(args, Some(&dir))?;
    let cached = client.cached_result(&digest).await?;
    let local = client.source.local.clone();
    let slots = Slots::open(local.clone(), &dir, &settings.written.sandbox, true)?;
    let instance = settings.written.instances[0].clone();
    let spec = load(&client, &slots, &instance, &settings, digest).await?;
    let mut metadata = ExecutedActionMetadata::default();
    let outcome = slots
        .run(
            0,
            &spec,
            &CancellationToken::new(),
            &mut metadata,
            &mut None,
        )
        .await;
    println!(
        "reran {digest} in {} (sandbox: {:?}, {})",
        dir.display(),
        choice,
        slots.sandbox.backend.name()
    );
    if let Some(e) = &outcome.error {
        // Its outputs are not the action's: nothing to compare.
        println!("the run ended with an error, so nothing is compared: {e}");
        return Ok(3);
    }
    let Some(cached) = cached else {
        println!(
            "exit code {}; the action cache holds no result to compare with",
            outcome.result.exit_code
        );
        return Ok(2);
    };
    let function = digest.function();
    let now = outputs_of(&outcome.result, function, |tree| read_local(&local, tree)).await?;
    let before = outputs_of(&cached, function, |tree| read_remote(&client, tree)).await?;
    let mut differ = 0;
    if cached.exit_code != outcome.result.exit_code {
        differ += 1;
        println!(
            "exit code differs: cached {}, now {}",
            cached.exit_code, outcome.result.exit_code
        );
    }
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(now.keys()).collect();
    for path in paths {
        match (before.get(path), now.get(path)) {
            (Some(a), Some(b)) if a == b => println!("same: {path}"),
            (a, b) => {
                differ += 1;
                let show = |o: Option<&(Digest, bool)>| {
                    o.map_or("(absent)".to_string(), |(d, _)| d.to_string())
                };
                println!("differs: {path}: cached {}, now {}", show(a), show(b));
            }
        }
    }
    let (links_before, links_now) = (symlinks(&cached), symlinks(&outcome.result));
    let names: std::collections::BTreeSet<&String> =
        links_before.keys().chain(links_now.keys()).collect();
    for path in names {
        let (a, b) = (links_before.get(path), links_now.get(path));
        if a == b {
            println!("same: {path} (symlink)");
        } else {
            differ += 1;
            println!("differs: {path} (symlink): cached {a:?}, now {b:?}");
        }
    }
    if cached.stdout_digest != outcome.result.stdout_digest {
        println!("note: stdout differs (not counted)");
    }
    if differ == 0 {
        println!("reproduced");
        Ok(0)
    } else {
        println!("NOT reproduced: {differ} difference(s)");
        Ok(1)
    }
}

/// Every output symlink by path, with its target.
#[allow(deprecated)] // Older clients still fill the v2.0 fields.
fn symlinks(result: &ActionResult) -> BTreeMap<String, String> {
    result
        .output_symlinks
        .iter()
        .chain(&result.output_file_symlinks)
        .chain(&result.output_directory_symlinks)
        .map(|l| (l.path.clone(), l.target.clone()))
        .collect()
}

/// The configuration a worker slot on this host would run with, for `instance`.
fn settings(
    args: &ServerArgs,
    dir: &std::path::Path,
    choice: SandboxChoice,
) -> Result<Settings, Error> {
    let mut config = Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::default()
    };
    config.sandbox.reuse_sandboxes = false;
    config.sandbox.backend = match choice {
        SandboxChoice::Host => SandboxBackend::Auto,
        SandboxChoice::Chroot => SandboxBackend::Bwrap,
        SandboxChoice::None => SandboxBackend::Plain,
    };
    let mut instance = config.instances[0].clone();
    instance.name = args.instance.clone();
    instance.sandbox = match choice {
        SandboxChoice::Chroot => SandboxMode::Chroot,
        _ => SandboxMode::Host,
    };
    instance.selectable_sandboxes = vec![SandboxMode::Host, SandboxMode::Chroot];
    config.instances = vec![InstanceConfig { ..instance }];
    Settings::new(config).map_err(|e| Error::BadInput(e.to_string()))
}

/// Loads the action into the local CAS, fetching whatever it lacks from the server.
async fn load(
    client: &Client,
    slots: &Slots,
    instance: &InstanceConfig,
    settings: &Settings,
    digest: Digest,
) -> Result<spec::ActionSpec, Error> {
    let view = client.view(digest).await?;
    let (remote, local) = (&client.source.remote, &client.source.local);
    let directories =
        std::sync::Arc::new(crate::execution::input_tree::DirectoryCache::new(1 << 20));
    let mut wanted = Vec::new();
    if let Some(c) = view.action.command_digest.as_ref() {
        wanted.push(Digest::from_proto(digest.function(), c)?);
    }
    for _ in 0..MAX_FETCH_ROUNDS {
        remote.fetch_missing(local, &wanted).await?;
        let (cas, inst, sandbox, limits, dirs) = (
            local.clone(),
            instance.clone(),
            slots.sandbox.clone(),
            settings.execution.limits,
            directories.clone(),
        );
        let loaded = crate::offload::blocking(move || {
            spec::load(&cas, &dirs, &inst, &sandbox, digest, &limits)
        })
        .await;
        match loaded {
            Ok(spec) => {
                let missing = local.find_missing(&spec.inputs.files);
                if missing.is_empty() {
                    return Ok(spec);
                }
                wanted = missing;
            }
            Err(Error::MissingBlobs(missing)) => wanted = missing,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Upstream(format!(
        "the inputs of {digest} were still incomplete after {MAX_FETCH_ROUNDS} fetches"
    )))
}

async fn read_local(cas: &crate::storage::Cas, tree: Digest) -> Result<Option<Tree>, Error> {
    let cas = cas.clone();
    crate::offload::blocking(move || crate::storage::tree::read_message(&cas, &tree, "tree")).await
}

async fn read_remote(client: &Client, tree: Digest) -> Result<Option<Tree>, Error> {
    read_proto(&client.source, &tree, "tree").await
}

/// Every output file by path (output directories flattened), with its digest and mode.
async fn outputs_of<F, Fut>(
    result: &ActionResult,
    function: DigestFunction,
    read_tree: F,
) -> Result<BTreeMap<String, (Digest, bool)>, Error>
where
    F: Fn(Digest) -> Fut,
    Fut: Future<Output = Result<Option<Tree>, Error>>,
{
    let mut files = BTreeMap::new();
    for f in &result.output_files {
        if let Some(d) = &f.digest {
            files.insert(
                f.path.clone(),
                (Digest::from_proto(function, d)?, f.is_executable),
            );
        }
    }
    for dir in &result.output_directories {
        let Some(t) = &dir.tree_digest else { continue };
        let Some(tree) = read_tree(Digest::from_proto(function, t)?).await? else {
            return Err(Error::Absent(format!(
                "the tree of output directory {} is not in the CAS",
                dir.path
            )));
        };
        flatten(&tree, function, &dir.path, &mut files)?;
    }
    Ok(files)
}

fn flatten(
    tree: &Tree,
    function: DigestFunction,
    base: &str,
    files: &mut BTreeMap<String, (Digest, bool)>,
) -> Result<(), Error> {
    let children: std::collections::HashMap<Digest, &crate::proto::remote_execution::Directory> =
        tree.children
            .iter()
            .map(|d| (Digest::of(function, &prost::Message::encode_to_vec(d)), d))
            .collect();
    let mut stack = vec![(tree.root.clone().unwrap_or_default(), base.to_string())];
    while let Some((dir, path)) = stack.pop() {
        for f in &dir.files {
            if let Some(d) = &f.digest {
                files.insert(
                    format!("{path}/{}", f.name),
                    (Digest::from_proto(function, d)?, f.is_executable),
                );
            }
        }
        for sub in &dir.directories {
            let Some(d) = &sub.digest else { continue };
            if let Some(child) = children.get(&Digest::from_proto(function, d)?) {
                stack.push(((*child).clone(), format!("{path}/{}", sub.name)));
            }
        }
    }
    Ok(())
}
