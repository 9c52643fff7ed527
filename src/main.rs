//! The `rexd` command: parses the CLI, sets up logging and runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rexd::Config;
use rexd::config::Settings;

#[derive(Parser)]
#[command(
    name = "rexd",
    version,
    about = "A Remote Execution API v2 server: CAS, action cache and ByteStream on one port"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// TOML configuration file; without it, the built-in defaults (config/rexd.toml) apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `listen` from the config.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory, overriding `data_dir` from the config.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Run this host as a remote worker (a Remote Workers API bot) of a rexd server; its
    /// storage, sandbox and `execution.local_workers` (concurrent leases) come from the
    /// configuration as for a server, and `[worker]` says how to reach the server.
    Worker {
        /// The server, as grpc://HOST:PORT or grpcs://HOST:PORT; overrides `worker.server`.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        store: ServeArgs,
    },
    /// Look at an action on a running server, rerun it here, or diff two actions.
    Action {
        #[command(subcommand)]
        command: rexd::action_cli::ActionCommand,
    },
    /// Check a configuration file and print the configuration in force.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
    /// Re-hash every blob in the store and remove the damaged ones (run while the server
    /// is stopped).
    Verify {
        #[command(flatten)]
        store: ServeArgs,
        /// Only report damaged blobs; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    // pid 1 of a worker's long-lived sandbox: not a user command, so not in the help.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            rexd::execution::warm::init::SUBCOMMAND,
        ))
    {
        return ExitCode::from(rexd::execution::warm::init::main() as u8);
    }
    let cli = Cli::parse();
    match cli.command {
        // Builds everything serve reads at start-up, token files and variables included.
        Some(Command::CheckConfig { path }) => match Config::load(&path).and_then(Settings::new) {
            Ok(settings) => {
                println!("{}: OK", path.display());
                println!("{:#?}", settings.written);
                println!("data directory in force: {}", settings.data_dir.display());
                println!("{:#?}", settings.execution);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Worker { server, store }) => worker(server, store),
        Some(Command::Verify { store, dry_run }) => verify(store, dry_run),
        Some(Command::Action { command }) => action(command),
        None => serve(cli.serve),
    }
}

/// The configuration in force (the file, or the built-in defaults, with the CLI overrides),
/// checked and converted, with logging set up from it; `None` after reporting an invalid
/// configuration.
fn load_config(args: ServeArgs) -> Option<Settings> {
    let loaded = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let mut config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rexd: {e}");
            return None;
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = Some(dir);
    }
    let settings = match Settings::new(config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("rexd: {e}");
            return None;
        }
    };
    init_logging(&settings.written);
    Some(settings)
}

fn verify(args: ServeArgs, dry_run: bool) -> ExitCode {
    let Some(settings) = load_config(args) else {
        return ExitCode::FAILURE;
    };
    let data_dir = &settings.data_dir;
    let result = rexd::storage::Cas::open(data_dir, settings.cas.clone())
        .and_then(|cas| rexd::storage::verify::verify_all(&cas, !dry_run));
    match result {
        Ok(report) => {
            println!(
                "{}: checked {} blobs ({} bytes); {} damaged{}, {} vanished",
                data_dir.display(),
                report.checked,
                report.bytes,
                report.damaged.len(),
                if dry_run { "" } else { " (removed)" },
                report.vanished.len()
            );
            for d in &report.damaged {
                println!("damaged: {d:?}");
            }
            if report.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("rexd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own malloc arena, up to eight per CPU. Upload
/// and download buffers are allocated and freed on different threads (the async workers and
/// the blocking pool), so every arena ends up holding its own free megabytes: four concurrent
/// 256 MiB transfers peaked at 98 MiB of RSS and kept 66 MiB after. Two arenas keep the
/// peak near 55 MiB at the same throughput. An operator's `MALLOC_ARENA_MAX` still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists; mallopt only sets a tunable.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
        }
    }
}

fn worker(server: Option<String>, args: ServeArgs) -> ExitCode {
    limit_malloc_arenas();
    let Some(settings) = load_config(args) else {
        return ExitCode::FAILURE;
    };
    let Some(server) = server.or_else(|| settings.written.worker.server.clone()) else {
        eprintln!("rexd worker: name the server with --server grpc://HOST:PORT or worker.server");
        return ExitCode::FAILURE;
    };
    block_on(rexd::bot::run(settings, server))
}

/// Runs `main` on a multi-threaded runtime, reporting its error.
fn block_on(main: impl std::future::Future<Output = Result<(), rexd::Error>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rexd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rexd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn action(command: rexd::action_cli::ActionCommand) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
        .with_writer(std::io::stderr)
        .init();
    let mut code = 0;
    let exit = block_on(async {
        code = rexd::action_cli::run(command).await?;
        Ok(())
    });
    // 1 and 2 are answers (differs, nothing to compare); a failure to answer is 3.
    if exit == ExitCode::SUCCESS {
        ExitCode::from(code)
    } else {
        ExitCode::from(3)
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    limit_malloc_arenas();
    let Some(settings) = load_config(args) else {
        return ExitCode::FAILURE;
    };
    block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), rexd::Error> {
    let listen = settings.written.listen;
    let ctx = tokio::task::spawn_blocking(move || rexd::server::open_context(settings))
        .await
        .map_err(|e| rexd::Error::Bug(e.to_string()))??;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| rexd::Error::io(format!("binding {listen}"), e))?;
    rexd::server::run(ctx, listener, shutdown_signal()).await
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
        .with_writer(std::io::stderr);
    match config.log_format {
        rexd::config::LogFormat::Text => builder.init(),
        rexd::config::LogFormat::Json => builder.json().init(),
    }
}

/// Colour only for a person at a terminal: files and journald get plain text, and a
/// non-empty `NO_COLOR` (no-color.org) turns it off everywhere.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}
