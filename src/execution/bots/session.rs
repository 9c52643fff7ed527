//! One bot's session as the server keeps it, and how a bot's report is reconciled with it.
//! The server's record is the authority: a lease the bot does not mention while still
//! PENDING is offered again (the reply that carried it may have been lost), one it stops
//! mentioning while ACTIVE is lost, and one it reports that it was never given is cancelled.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use crate::execution::pools::PoolId;
use crate::execution::scheduler::Job;
use crate::proto::remote_execution::ExecutedActionMetadata;
use crate::proto::remoteworkers::{Lease, LeaseState};

/// A lease the server has handed to a bot.
pub struct Held {
    pub job: Arc<Job>,
    pub state: LeaseState,
    /// What the server recorded when it handed the lease out (queued and start times).
    pub metadata: ExecutedActionMetadata,
}

pub struct Session {
    pub name: String,
    pub bot_id: String,
    pub pool: PoolId,
    /// Leases the bot runs at once.
    pub slots: usize,
    pub expires: Instant,
    /// Whether the bot said it takes new leases.
    pub accepting: bool,
    /// By lease id (the operation name).
    pub leases: BTreeMap<String, Held>,
}

/// What a report changed, for the farm to act on outside its lock.
#[derive(Default)]
pub struct Reconciled {
    /// Leases the bot completed, with what it reported.
    pub completed: Vec<(Held, Lease)>,
    /// Leases the bot dropped while running them.
    pub lost: Vec<Held>,
    /// Lease ids the bot reported as running that it was never given (or no longer holds
    /// here): the reply tells it to cancel them.
    pub unknown: Vec<String>,
    /// Leases newly marked CANCELLED because their operation was cancelled or finished.
    pub cancelled: Vec<Arc<Job>>,
}

impl Reconciled {
    /// Whether the report changed anything the bot should hear about at once.
    pub fn is_empty(&self) -> bool {
        self.completed.is_empty()
            && self.lost.is_empty()
            && self.unknown.is_empty()
            && self.cancelled.is_empty()
    }
}

impl Session {
    /// Leases the session can still take.
    pub fn free_slots(&self) -> usize {
        if self.accepting {
            self.slots.saturating_sub(self.leases.len())
        } else {
            0
        }
    }

    /// Applies the bot's report of its leases.
    pub fn reconcile(&mut self, reported: &[Lease]) -> Reconciled {
        let mut out = Reconciled::default();
        let mut mentioned = HashSet::new();
        for lease in reported {
            mentioned.insert(lease.id.as_str());
            let state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
            let Some(held) = self.leases.get_mut(&lease.id) else {
                if matches!(state, LeaseState::Active | LeaseState::Pending) {
                    out.unknown.push(lease.id.clone());
                }
                continue; // Superfluous COMPLETED or CANCELLED records are ignored.
            };
            match (held.state, state) {
                (LeaseState::Cancelled, LeaseState::Completed | LeaseState::Cancelled) => {
                    self.leases.remove(&lease.id);
                }
                (_, LeaseState::Completed) => {
                    let held = self.leases.remove(&lease.id).expect("present");
                    out.completed.push((held, lease.clone()));
                }
                (LeaseState::Pending, LeaseState::Active) => held.state = LeaseState::Active,
                // Only the server may cancel: a bot that says so gave the lease up.
                (LeaseState::Pending | LeaseState::Active, LeaseState::Cancelled) => {
                    out.lost
                        .push(self.leases.remove(&lease.id).expect("present"));
                }
                _ => {}
            }
        }
        let dropped: Vec<String> = self
            .leases
            .iter()
            .filter(|(id, held)| {
                !mentioned.contains(id.as_str()) && held.state != LeaseState::Pending
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in dropped {
            let held = self.leases.remove(&id).expect("present");
            if held.state == LeaseState::Active {
                out.lost.push(held);
            }
        }
        for held in self.leases.values_mut() {
            let op = &held.job.op;
            if held.state != LeaseState::Cancelled && (op.cancel.is_cancelled() || op.is_done()) {
                held.state = LeaseState::Cancelled;
                out.cancelled.push(held.job.clone());
            }
        }
        out
    }

    /// The leases the reply reports: every one held, with the payload while PENDING, and
    /// a cancellation for each unknown one.
    pub fn leases_to_report(&self, unknown: &[String]) -> Vec<Lease> {
        let mut leases: Vec<Lease> = self
            .leases
            .iter()
            .map(|(id, held)| {
                let pending = held.state == LeaseState::Pending;
                Lease {
                    id: id.clone(),
                    state: held.state as i32,
                    payload: pending.then(|| super::lease::payload(&held.job)),
                    requirements: pending.then(|| super::lease::requirements(&held.job)),
                    ..Default::default()
                }
            })
            .collect();
        leases.extend(unknown.iter().map(|id| Lease {
            id: id.clone(),
            state: LeaseState::Cancelled as i32,
            ..Default::default()
        }));
        leases
    }
}
