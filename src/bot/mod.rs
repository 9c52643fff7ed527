//! `rexd worker`: a Remote Workers API bot that runs another rexd's actions on this host.
//! It opens a bot session, reports its leases in every UpdateBotSession (the server's long
//! poll answers when there is work or a cancellation), and runs each lease in a slot of
//! its own with the local sandbox, its inputs cached in a local CAS. A lease finishing
//! interrupts the poll, so its result is reported at once. It reconnects with backoff
//! when the server goes away, starts a new session when the old one is gone (abandoning
//! the leases of the old), and on SIGTERM takes no new leases and exits once its running
//! ones are reported, or cancels them after the shutdown grace.

pub(crate) mod connect;
mod lease_run;
pub(crate) mod remote;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{InstanceConfig, Settings};
use crate::error::Error;
use crate::execution::bots::{SLOTS_PROPERTY, lease};
use crate::execution::input_tree::DirectoryCache;
use crate::execution::worker::Slots;
use crate::offload::blocking;
use crate::proto::remoteworkers::{
    BotSession, BotStatus, CreateBotSessionRequest, Lease, LeaseState, UpdateBotSessionRequest,
    Worker, bots_client::BotsClient,
};
use lease_run::{Runner, Slot};

/// Longest pause between attempts to reach a server that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A lease this worker holds.
struct Local {
    /// Distinguishes a lease given again after its first run was abandoned.
    generation: u64,
    cancel: CancellationToken,
    /// The COMPLETED lease to report, once its run ended.
    done: Option<Lease>,
}

/// The worker's leases and the slots free for new ones.
struct Held {
    leases: BTreeMap<String, Local>,
    free: Vec<Slot>,
    generation: u64,
}

/// Runs the worker until SIGTERM (or SIGINT) and its running leases are reported.
pub async fn run(settings: Settings, server: String) -> Result<(), Error> {
    let written = &settings.written;
    let channel = connect::channel(&server, &written.worker)?;
    let bot_id = written.worker.bot_id.clone().unwrap_or_else(host_name);
    let instance_name = written.worker.instance_name.clone();
    let instance = written
        .instances
        .iter()
        .find(|i| i.name == instance_name)
        .cloned()
        .unwrap_or_else(|| InstanceConfig::named(&instance_name));
    let data_dir = settings.data_dir.clone();
    let (cas_options, sandbox_config) = (settings.cas.clone(), written.sandbox.clone());
    let keep_failed = settings.execution.keep_failed_action_dirs;
    let slots = blocking(move || {
        let cas = crate::storage::Cas::open(&data_dir, cas_options)?;
        Slots::open(cas, &data_dir, &sandbox_config, keep_failed)
    })
    .await?;
    let sandbox = slots.sandbox.clone();
    let slot_count = settings.execution.workers.max(1);
    let runner = Arc::new(Runner {
        bot_id: bot_id.clone(),
        slots,
        remote: remote::RemoteCas {
            channel: channel.clone(),
            instance: instance_name.clone(),
        },
        instance,
        limits: settings.execution.limits,
        directories: DirectoryCache::new(settings.execution.directory_cache_bytes),
    });
    let worker = describe(&settings, slot_count);
    // A worker often shares a host with its server: it serves metrics only where told to.
    let wanted = written.metrics.listen.is_some();
    if wanted && let Some(http) = crate::server::metrics::bind(&written.metrics).await? {
        crate::server::metrics::handle();
        let routes = crate::server::metrics::routes(
            Arc::new(|| crate::server::metrics::handle().render()),
            Arc::default(),
            None,
        )
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                "not found; try /metrics or /healthz\n",
            )
        });
        tokio::spawn(crate::server::metrics::serve(http, routes));
    }
    tracing::info!(%server, bot = %bot_id, slots = slot_count, sandbox = sandbox.backend.name(), "rexd worker starting");
    let held = Arc::new(Mutex::new(Held {
        leases: BTreeMap::new(),
        free: (0..slot_count)
            .map(|index| Slot { index, warm: None })
            .collect(),
        generation: 0,
    }));
    let changed = Arc::new(Notify::new());
    let mut bots = BotsClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024);
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut terminating = false;
    let mut grace_end = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        // A session.
        let created = tokio::select! {
            created = bots.create_bot_session(CreateBotSessionRequest {
                parent: instance_name.clone(),
                bot_session: Some(BotSession {
                    bot_id: bot_id.clone(),
                    status: BotStatus::Ok as i32,
                    worker: Some(worker.clone()),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
            }) => created,
            _ = &mut stop, if !terminating => return Ok(()),
        };
        let mut session = match created {
            Ok(reply) => reply.into_inner(),
            Err(status) if fatal(&status) => return Err(refused(&status)),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), retry_in_ms = backoff.as_millis() as u64, "cannot open a bot session");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::info!(session = %session.name, "bot session open");
        backoff = Duration::from_millis(200);
        loop {
            accept(&runner, &held, &changed, &session.leases, terminating);
            let (leases, reported_done) = report(&held);
            if terminating && leases.is_empty() {
                tracing::info!("worker stopped: no leases left");
                return Ok(());
            }
            let request = UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(BotSession {
                    name: session.name.clone(),
                    bot_id: bot_id.clone(),
                    status: if terminating {
                        BotStatus::BotTerminating
                    } else {
                        BotStatus::Ok
                    } as i32,
                    worker: Some(worker.clone()),
                    leases,
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                update_mask: None,
            };
            let grace = async {
                match grace_end {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let reply = tokio::select! {
                reply = bots.update_bot_session(request) => reply,
                _ = changed.notified() => continue,
                _ = &mut stop, if !terminating => {
                    tracing::info!(grace_secs = settings.shutdown_grace.as_secs(), "SIGTERM: finishing running leases, taking no new ones");
                    terminating = true;
                    grace_end = Some(tokio::time::Instant::now() + settings.shutdown_grace);
                    continue;
                }
                _ = grace => {
                    tracing::warn!("shutdown grace over: cancelling running leases");
                    cancel_all(&held);
                    grace_end = None;
                    continue;
                }
            };
            match reply {
                Ok(reply) => {
                    backoff = Duration::from_millis(200);
                    forget_reported(&held, &reported_done);
                    session = reply.into_inner();
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tracing::warn!(
                        message = status.message(),
                        "the server forgot this bot session; abandoning its leases and opening a new one"
                    );
                    abandon(&held);
                    if terminating {
                        return Ok(());
                    }
                    break;
                }
                Err(status) if fatal(&status) => return Err(refused(&status)),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), retry_in_ms = backoff.as_millis() as u64, "bot session update failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Starts the new PENDING leases the server sent, while slots are free, and cancels the
/// ones it cancelled.
fn accept(
    runner: &Arc<Runner>,
    held: &Arc<Mutex<Held>>,
    changed: &Arc<Notify>,
    offered: &[Lease],
    terminating: bool,
) {
    let mut state = held.lock().unwrap();
    for lease in offered {
        let lease_state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
        match lease_state {
            LeaseState::Cancelled => {
                if let Some(local) = state.leases.get(&lease.id) {
                    local.cancel.cancel();
                }
            }
            LeaseState::Pending if !terminating && !state.leases.contains_key(&lease.id) => {
                let Some(mut slot) = state.free.pop() else {
                    continue; // The server offered more than the slots; it offers it again.
                };
                state.generation += 1;
                let generation = state.generation;
                let cancel = CancellationToken::new();
                state.leases.insert(
                    lease.id.clone(),
                    Local {
                        generation,
                        cancel: cancel.clone(),
                        done: None,
                    },
                );
                let (runner, held, changed, lease) =
                    (runner.clone(), held.clone(), changed.clone(), lease.clone());
                tokio::spawn(async move {
                    let done = runner.run(&lease, &mut slot, &cancel).await;
                    let mut state = held.lock().unwrap();
                    state.free.push(slot);
                    if let Some(local) = state.leases.get_mut(&lease.id)
                        && local.generation == generation
                    {
                        local.done = Some(done);
                    }
                    drop(state);
                    changed.notify_one();
                });
            }
            _ => {}
        }
    }
}

/// The leases to report, and which of them are reported COMPLETED (with the run's
/// generation, so a lease given again since is not forgotten with them).
fn report(held: &Mutex<Held>) -> (Vec<Lease>, Vec<(String, u64)>) {
    let state = held.lock().unwrap();
    let mut done = Vec::new();
    let leases = state
        .leases
        .iter()
        .map(|(id, local)| match &local.done {
            Some(lease) => {
                done.push((id.clone(), local.generation));
                lease.clone()
            }
            None => Lease {
                id: id.clone(),
                state: LeaseState::Active as i32,
                ..Default::default()
            },
        })
        .collect();
    (leases, done)
}

/// Drops the completed leases the server has now heard about.
fn forget_reported(held: &Mutex<Held>, reported: &[(String, u64)]) {
    let mut state = held.lock().unwrap();
    for (id, generation) in reported {
        if state
            .leases
            .get(id)
            .is_some_and(|l| l.generation == *generation)
        {
            state.leases.remove(id);
        }
    }
}

/// The session is gone: its leases were given to other bots, so their runs are stopped.
fn abandon(held: &Mutex<Held>) {
    let mut state = held.lock().unwrap();
    for local in state.leases.values() {
        local.cancel.cancel();
    }
    state.leases.clear();
}

fn cancel_all(held: &Mutex<Held>) {
    for local in held.lock().unwrap().leases.values() {
        local.cancel.cancel();
    }
}

/// What the worker offers: the server's platform keys as this host has them, and its slots.
fn describe(settings: &Settings, slots: usize) -> Worker {
    let platform = &settings.execution.platform;
    Worker {
        devices: vec![crate::proto::remoteworkers::Device {
            handle: host_name(),
            properties: Vec::new(),
        }],
        ..lease::worker_with(platform, [(SLOTS_PROPERTY, slots.to_string())])
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Refusals that retrying cannot fix.
fn fatal(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition
    )
}

fn refused(status: &tonic::Status) -> Error {
    Error::Denied(format!(
        "the server refused this worker ({:?}): {}",
        status.code(),
        status.message()
    ))
}

/// Resolves at SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
