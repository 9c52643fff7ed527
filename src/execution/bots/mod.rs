//! Remote bots, the second kind of executor beside the local worker slots: the server side
//! of the Remote Workers API's Bots service. A bot opens a session (CreateBotSession) and
//! reports on it (UpdateBotSession); the reply hands it leases taken from the scheduler's
//! queue. An update from a bot with free slots and nothing to hear waits (a long poll)
//! until an action is queued or one of its leases is cancelled. A session that stops
//! reporting expires: its leases go back to the queue, up to `max_lease_retries` times.
//! Results pass [`lease::check_result`] and then [`completion::finish`], as a local
//! worker's do.

pub mod lease;
mod session;
mod worker_props;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Error;
use crate::execution::completion::{self, RunOutcome};
use crate::execution::operations;
use crate::execution::pools::PoolId;
use crate::execution::scheduler::Scheduler;
use crate::offload::blocking;
use crate::proto::remoteworkers::{BotSession, BotStatus, LeaseState, Worker};
use crate::storage::{Cas, TieredStore};
use session::{Held, Session};
pub use worker_props::SLOTS_PROPERTY;
use worker_props::{offered_properties, slots_of};

/// The bounds and timers of bot sessions, from `[execution]`.
#[derive(Debug, Clone)]
pub struct BotLimits {
    pub session_timeout: Duration,
    pub max_lease_retries: u32,
    pub max_sessions: usize,
}

pub struct BotFarm {
    limits: BotLimits,
    scheduler: Arc<Scheduler>,
    cas: Cas,
    store: TieredStore,
    state: Mutex<Farm>,
}

#[derive(Default)]
struct Farm {
    /// By session name.
    sessions: HashMap<String, Session>,
    /// Session name by bot id: a bot's new session replaces its old one.
    by_bot: HashMap<String, String>,
}

impl BotFarm {
    pub fn new(limits: BotLimits, scheduler: Arc<Scheduler>, cas: Cas, store: TieredStore) -> Self {
        BotFarm {
            limits,
            scheduler,
            cas,
            store,
            state: Mutex::default(),
        }
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.state.lock().unwrap().sessions.len()
    }

    /// Leases held by bots now, PENDING, ACTIVE or being cancelled.
    pub fn leases(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.sessions.values().map(|s| s.leases.len()).sum()
    }

    /// How long an update may wait for work: well inside the session's expiry, so the bot
    /// reports again in time.
    fn long_poll(&self) -> Duration {
        (self.limits.session_timeout / 3).min(Duration::from_secs(10))
    }

    /// Opens a session for a bot on `instance` (the request's `parent`).
    pub async fn create(
        self: &Arc<Self>,
        instance: &str,
        bot: BotSession,
    ) -> Result<BotSession, Error> {
        if !bot.name.is_empty() {
            return Err(Error::BadInput(
                "bot_session.name is chosen by the server; leave it empty".into(),
            ));
        }
        if bot.bot_id.is_empty() || bot.bot_id.len() > 256 {
            return Err(Error::BadInput(
                "bot_session.bot_id must name the bot (1 to 256 bytes)".into(),
            ));
        }
        let worker = bot.worker.clone().unwrap_or_default();
        let slots = slots_of(&worker)?;
        let pool = self.pool_of(&worker)?;
        let name = if instance.is_empty() {
            format!("botSessions/{}", uuid::Uuid::new_v4())
        } else {
            format!("{instance}/botSessions/{}", uuid::Uuid::new_v4())
        };
        let replaced = {
            let mut state = self.state.lock().unwrap();
            let replaced = match state.by_bot.remove(&bot.bot_id) {
                Some(old) => state.sessions.remove(&old),
                None => None,
            };
            if state.sessions.len() >= self.limits.max_sessions {
                return Err(Error::OverLimit(format!(
                    "{} bot sessions are open, the server's max_bot_sessions",
                    state.sessions.len()
                )));
            }
            state.by_bot.insert(bot.bot_id.clone(), name.clone());
            state.sessions.insert(
                name.clone(),
                Session {
                    name: name.clone(),
                    bot_id: bot.bot_id.clone(),
                    pool,
                    slots,
                    expires: Instant::now() + self.limits.session_timeout,
                    accepting: bot.status == BotStatus::Ok as i32,
                    leases: BTreeMap::new(),
                },
            );
            replaced
        };
        if let Some(old) = replaced {
            tracing::info!(bot = %old.bot_id, session = %old.name, pool = self.pool_name(old.pool), "bot left: a new session replaced it");
            self.lose(old.leases.into_values().collect(), &old.bot_id, old.pool);
        }
        let pool_name = self.pool_name(pool).to_string();
        tracing::info!(bot = %bot.bot_id, session = %name, pool = %pool_name, slots, "bot joined");
        metrics::counter!("rexd_bot_sessions_created_total", "pool" => pool_name).increment(1);
        self.update_session(&name, bot, false).await
    }

    /// Applies a bot's report and answers with its leases.
    pub async fn update(
        self: &Arc<Self>,
        name: &str,
        bot: BotSession,
    ) -> Result<BotSession, Error> {
        if bot.name != name {
            return Err(Error::BadInput(format!(
                "bot_session.name {:?} differs from the request's name {name:?}",
                bot.name
            )));
        }
        self.update_session(name, bot, true).await
    }

    async fn update_session(
        self: &Arc<Self>,
        name: &str,
        bot: BotSession,
        may_wait: bool,
    ) -> Result<BotSession, Error> {
        let (pool, reconciled) = {
            let mut state = self.state.lock().unwrap();
            let session = state.sessions.get_mut(name).ok_or_else(|| {
                Error::Absent(format!(
                    "no bot session named {name:?}: it expired or was replaced; create a new one"
                ))
            })?;
            if session.bot_id != bot.bot_id {
                return Err(Error::BadInput(format!(
                    "session {name:?} belongs to bot {:?}, not {:?}",
                    session.bot_id, bot.bot_id
                )));
            }
            session.expires = Instant::now() + self.limits.session_timeout;
            session.accepting = bot.status == BotStatus::Ok as i32;
            (session.pool, session.reconcile(&bot.leases))
        };
        let bot_id = bot.bot_id.as_str();
        for id in &reconciled.unknown {
            tracing::warn!(bot = bot_id, lease = %id, "bot reported a lease it does not hold here; cancelling it");
        }
        for job in &reconciled.cancelled {
            job.op.complete(operations::execute_response(
                None,
                false,
                Some(Error::Cancelled("the operation was cancelled".into())),
            ));
            self.scheduler.finished(job);
        }
        let quiet = reconciled.is_empty();
        self.lose(reconciled.lost, bot_id, pool);
        if !reconciled.completed.is_empty() {
            // In a task of its own, so a bot that drops the call cannot leave a result
            // half-recorded.
            let (this, completed, bot_id) =
                (self.clone(), reconciled.completed, bot_id.to_string());
            let _ = tokio::spawn(async move {
                for (held, lease) in completed {
                    this.complete(held, &lease, &bot_id).await;
                }
            })
            .await;
        }
        let assigned = self.assign(name);
        if quiet && may_wait && assigned == 0 && self.free_slots(name) > 0 {
            self.wait(name).await;
            self.assign(name);
        }
        self.reply(name, bot, &reconciled.unknown)
    }

    fn free_slots(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.sessions.get(name).map_or(0, Session::free_slots)
    }

    /// Moves queued actions into the session's free slots; returns how many.
    fn assign(&self, name: &str) -> usize {
        let mut state = self.state.lock().unwrap();
        let Some(session) = state.sessions.get_mut(name) else {
            return 0;
        };
        let mut assigned = 0;
        while session.free_slots() > 0 {
            let Some(job) = self.scheduler.try_next(session.pool) else {
                break;
            };
            let executor = format!("{}/{}", self.pool_name(session.pool), session.bot_id);
            let Some(metadata) = completion::begin(&job, &executor) else {
                self.scheduler.finished(&job); // Cancelled while queued.
                continue;
            };
            session.leases.insert(
                job.op.name.clone(),
                Held {
                    job,
                    state: LeaseState::Pending,
                    metadata,
                },
            );
            assigned += 1;
        }
        assigned
    }

    /// The long poll: until an action is queued, a lease of this session is cancelled, or
    /// the poll's time is up.
    async fn wait(&self, name: &str) {
        let (pool, tokens): (_, Vec<_>) = {
            let state = self.state.lock().unwrap();
            let Some(session) = state.sessions.get(name) else {
                return;
            };
            let tokens = session
                .leases
                .values()
                .map(|h| h.job.op.cancel.clone())
                .collect();
            (session.pool, tokens)
        };
        let deadline = tokio::time::Instant::now() + self.long_poll();
        let cancelled = async {
            if tokens.is_empty() {
                std::future::pending::<()>().await;
            }
            futures::future::select_all(tokens.iter().map(|t| Box::pin(t.cancelled()))).await;
        };
        tokio::select! {
            _ = self.scheduler.wait_for_work(pool, deadline) => {}
            _ = cancelled => {}
        }
    }

    fn reply(&self, name: &str, bot: BotSession, unknown: &[String]) -> Result<BotSession, Error> {
        let state = self.state.lock().unwrap();
        let session = state
            .sessions
            .get(name)
            .ok_or_else(|| Error::Absent(format!("bot session {name:?} expired")))?;
        let remaining = session.expires.saturating_duration_since(Instant::now());
        Ok(BotSession {
            name: name.to_string(),
            expire_time: Some((SystemTime::now() + remaining).into()),
            leases: session.leases_to_report(unknown),
            ..bot
        })
    }

    /// Finishes a lease the bot completed.
    async fn complete(&self, held: Held, lease: &crate::proto::remoteworkers::Lease, bot: &str) {
        let job = held.job;
        let (mut result, mut error) = lease::decode_result(lease, bot);
        if error.is_none() || lease.result.is_some() {
            let (cas, function, checked) = (
                self.cas.clone(),
                job.spec.action_digest.function(),
                result.clone(),
            );
            let (bot_name, workdir) = (bot.to_string(), job.spec.command.working_directory.clone());
            let verdict = blocking(move || {
                lease::check_result(&cas, function, &checked, &workdir, &bot_name)?;
                Ok(())
            })
            .await;
            if let Err(e) = verdict {
                tracing::error!(bot, operation = %job.op.name, error = %e, "discarding a bot's result");
                result = Default::default();
                error = Some(e);
            }
        }
        let mut metadata = result.execution_metadata.take().unwrap_or_default();
        metadata.queued_timestamp = held.metadata.queued_timestamp;
        if metadata.worker.is_empty() {
            metadata.worker = held.metadata.worker;
        }
        if metadata.worker_start_timestamp.is_none() {
            metadata.worker_start_timestamp = held.metadata.worker_start_timestamp;
        }
        let outcome = RunOutcome::reported(result, error);
        completion::finish(&self.store, &job, outcome, metadata).await;
        self.scheduler.finished(&job);
    }

    /// Leases a bot lost (it stopped reporting, or dropped them): each goes back to the
    /// queue, or fails once it has been lost `max_lease_retries` times.
    fn lose(&self, leases: Vec<Held>, bot: &str, pool: PoolId) {
        for held in leases {
            if held.state == LeaseState::Cancelled {
                continue; // Already finished when it was cancelled.
            }
            let job = held.job;
            let lost = job.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            metrics::counter!("rexd_lease_requeues_total", "pool" => self.pool_name(pool).to_string())
                .increment(1);
            if lost > self.limits.max_lease_retries {
                tracing::warn!(bot, operation = %job.op.name, lost, "action lost by bots too often; failing it");
                job.op.complete(operations::execute_response(
                    None,
                    false,
                    Some(Error::Upstream(format!(
                        "the action was lost {lost} times by bots that stopped reporting (last: \
                         {bot}); the server's max_lease_retries is {}",
                        self.limits.max_lease_retries
                    ))),
                ));
                self.scheduler.finished(&job);
                continue;
            }
            tracing::info!(bot, operation = %job.op.name, lost, "requeued an action a bot lost");
            let op = job.op.clone();
            if !self.scheduler.requeue(job) {
                op.complete(operations::execute_response(
                    None,
                    false,
                    Some(Error::ShuttingDown(
                        "the server shut down while a bot had lost the action; retry it".into(),
                    )),
                ));
            }
        }
    }

    /// Ends the sessions whose bots stopped reporting; their leases are lost.
    pub fn expire(&self) {
        let now = Instant::now();
        let expired: Vec<Session> = {
            let mut state = self.state.lock().unwrap();
            let names: Vec<String> = state
                .sessions
                .values()
                .filter(|s| s.expires <= now)
                .map(|s| s.name.clone())
                .collect();
            names
                .iter()
                .filter_map(|n| {
                    let session = state.sessions.remove(n)?;
                    if state.by_bot.get(&session.bot_id) == Some(n) {
                        state.by_bot.remove(&session.bot_id);
                    }
                    Some(session)
                })
                .collect()
        };
        for session in expired {
            tracing::info!(bot = %session.bot_id, session = %session.name, pool = self.pool_name(session.pool), leases = session.leases.len(), "bot left: its session expired");
            self.lose(
                session.leases.into_values().collect(),
                &session.bot_id,
                session.pool,
            );
        }
        self.record_gauges();
    }

    /// Bots connected per pool and their leases by state, for `/metrics`.
    fn record_gauges(&self) {
        let pools = self.scheduler.pools();
        let (per_pool, by_state) = {
            let state = self.state.lock().unwrap();
            let mut per_pool = vec![0usize; pools.len()];
            let mut by_state = [0usize; 3];
            for session in state.sessions.values() {
                per_pool[session.pool] += 1;
                for held in session.leases.values() {
                    by_state[match held.state {
                        LeaseState::Pending => 0,
                        LeaseState::Active => 1,
                        _ => 2,
                    }] += 1;
                }
            }
            (per_pool, by_state)
        };
        for (pool, count) in per_pool.iter().enumerate() {
            metrics::gauge!("rexd_bots_connected", "pool" => pools.name(pool).to_string())
                .set(*count as f64);
        }
        for (label, count) in ["pending", "active", "cancelled"]
            .iter()
            .zip(by_state.iter())
        {
            metrics::gauge!("rexd_bot_leases", "state" => *label).set(*count as f64);
        }
    }

    /// Checks for expired sessions every second on the current runtime.
    pub fn spawn_expiry(self: &Arc<Self>) {
        let farm = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(farm) = farm.upgrade() else { return };
                farm.expire();
            }
        });
    }

    fn pool_name(&self, pool: PoolId) -> &str {
        self.scheduler.pools().name(pool)
    }

    /// The pool a bot joins: the most specific one whose properties it offers.
    fn pool_of(&self, worker: &Worker) -> Result<PoolId, Error> {
        let offered = offered_properties(worker);
        let pools = self.scheduler.pools();
        pools.for_executor(&offered).ok_or_else(|| {
            let wanted = pools
                .iter()
                .map(|p| format!("{}: {:?}", p.name, p.properties))
                .collect::<Vec<_>>()
                .join("; ");
            Error::Unsatisfiable(format!(
                "no worker pool accepts this bot: it offers {}, and every pool asks for \
                 properties it lacks ({wanted})",
                offered
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}
