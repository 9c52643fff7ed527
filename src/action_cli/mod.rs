//! `rexd action show | rerun | diff`: look at an action on a running server from anywhere,
//! over REAPI (`--server grpc://...` or `grpcs://`, with a token), the way the web UI shows
//! it; run it again locally to see whether it reproduces; and diff two actions.

mod rerun;
mod show;
mod source;

use std::path::PathBuf;

use crate::bot::remote::RemoteCas;
use crate::config::WorkerConfig;
use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::inspect::ActionView;
use crate::proto::remote_execution::{
    ActionResult, GetActionResultRequest, action_cache_client::ActionCacheClient,
};
use source::ServerSource;

/// How to reach the server.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// The server, as grpc://HOST:PORT or grpcs://HOST:PORT.
    #[arg(long, default_value = "grpc://127.0.0.1:8980")]
    pub server: String,
    /// The instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// A file holding a bearer token (with `read`; `rerun` needs nothing more).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token, if not a file.
    #[arg(long)]
    pub token_env: Option<String>,
    /// For grpcs: the CA that signed the server's certificate (unset: the system's roots).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ActionCommand {
    /// What the action runs, on what inputs, and its cached result.
    Show {
        /// HASH/SIZE (or HASH-SIZE) of the Action.
        digest: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the inputs, run the command here as a worker would, and compare the outputs
    /// with the cached result; exits 1 when they differ.
    Rerun {
        digest: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Where to keep the fetched inputs and the run (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// `host`: Bazel's view, the host read-only (bubblewrap when available); `chroot`:
        /// the input root as `/` (needs bubblewrap); `none`: a plain process, no isolation.
        #[arg(long, default_value = "host")]
        sandbox: rerun::SandboxChoice,
    },
    /// What differs between two actions: arguments, environment, platform and inputs.
    Diff {
        first: String,
        second: String,
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        json: bool,
    },
}

/// Runs the command; the exit code it should end with.
pub async fn run(command: ActionCommand) -> Result<u8, Error> {
    match command {
        ActionCommand::Show {
            digest,
            server,
            json,
        } => {
            let client = Client::connect(&server, None)?;
            show::show(&client, parse_digest(&digest)?, json).await
        }
        ActionCommand::Rerun {
            digest,
            server,
            dir,
            sandbox,
        } => rerun::rerun(&server, parse_digest(&digest)?, dir, sandbox).await,
        ActionCommand::Diff {
            first,
            second,
            server,
            json,
        } => {
            let client = Client::connect(&server, None)?;
            let a = client.view(parse_digest(&first)?).await?;
            let b = client.view(parse_digest(&second)?).await?;
            let d = crate::inspect::diff::diff(&a, &b);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&d).map_err(|e| Error::Bug(e.to_string()))?
                );
            } else {
                print!("{}", d.to_text());
            }
            Ok(u8::from(!d.is_empty()))
        }
    }
}

/// `HASH/SIZE`, `HASH-SIZE` or `FUNCTION/HASH/SIZE`; without a function, it follows from the
/// hash's length (SHA-256; BLAKE3 and GITSHA1 must be named, as in the UI's links).
pub fn parse_digest(text: &str) -> Result<Digest, Error> {
    let bad = || {
        Error::BadInput(format!(
            "{text:?} is not a digest: write HASH/SIZE or FUNCTION/HASH/SIZE"
        ))
    };
    let (rest, size) = text
        .rsplit_once('/')
        .or_else(|| text.rsplit_once('-'))
        .ok_or_else(bad)?;
    let size: i64 = size.parse().map_err(|_| bad())?;
    let (function, hash) = match rest.split_once('/') {
        Some((name, hash)) => (DigestFunction::from_name(name).ok_or_else(bad)?, hash),
        None => (
            DigestFunction::from_hash_len(rest.len()).ok_or_else(bad)?,
            rest,
        ),
    };
    Digest::parse(function, hash, size)
}

/// A connection to the server and a local CAS that caches what it fetched.
pub struct Client {
    source: ServerSource,
    instance: String,
    /// Keeps a temporary local CAS alive.
    _scratch: Option<tempfile::TempDir>,
}

impl Client {
    /// Connects (lazily) to the server; the local CAS lives in `dir`, else a temporary one.
    pub fn connect(args: &ServerArgs, dir: Option<&std::path::Path>) -> Result<Self, Error> {
        let config = WorkerConfig {
            token_file: args.token_file.clone(),
            token_env: args.token_env.clone(),
            ca_cert: args.ca_cert.clone(),
            ..Default::default()
        };
        let channel = crate::bot::connect::channel(&args.server, &config)?;
        let (scratch, dir) = match dir {
            Some(d) => (None, d.to_path_buf()),
            None => {
                let t = tempfile::tempdir()
                    .map_err(|e| Error::io("creating a temporary directory", e))?;
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let local = crate::storage::Cas::open(&dir, Default::default())?;
        Ok(Client {
            source: ServerSource {
                remote: RemoteCas {
                    channel,
                    instance: args.instance.clone(),
                },
                local,
            },
            instance: args.instance.clone(),
            _scratch: scratch,
        })
    }

    pub async fn view(&self, digest: Digest) -> Result<ActionView, Error> {
        ActionView::load(&self.source, digest).await
    }

    /// The cached result, or `None` if the action cache holds none.
    pub async fn cached_result(&self, digest: &Digest) -> Result<Option<ActionResult>, Error> {
        let mut request = tonic::Request::new(GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(digest.to_proto()),
            digest_function: digest.function().to_proto() as i32,
            ..Default::default()
        });
        // So the server's history does not take this look for a build's cache hit.
        let metadata = crate::proto::remote_execution::RequestMetadata {
            tool_details: Some(crate::proto::remote_execution::ToolDetails {
                tool_name: crate::history::INSPECTOR_TOOL.into(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
            }),
            ..Default::default()
        };
        request.metadata_mut().insert_bin(
            crate::service::execution::REQUEST_METADATA_HEADER,
            tonic::metadata::MetadataValue::from_bytes(&prost::Message::encode_to_vec(&metadata)),
        );
        let reply = ActionCacheClient::new(self.source.remote.channel.clone())
            .get_action_result(request)
            .await;
        match reply {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::Upstream(format!(
                "GetActionResult: {:?}: {}",
                s.code(),
                s.message()
            ))),
        }
    }
}
