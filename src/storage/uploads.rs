//! The registry of ByteStream uploads: live ones (a Write stream is open) and interrupted
//! ones kept so a client can resume. QueryWriteStatus reads it, so it answers with the
//! committed size while a write is still arriving, the moment its stream breaks, and after.
//!
//! An upload moves from live to parked (or away, once committed) in one step under one lock,
//! taken by the task that owns the writer, so no query can fall between the two states, and
//! a dropped request handler cannot strand a live entry. Parked uploads are bounded by count
//! and age; live ones by the server's concurrent-request limit.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::storage::BlobWriter;

/// Bounds on the interrupted uploads kept for resumption.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Most interrupted uploads kept; the oldest go first.
    pub max_parked: usize,
    /// How long an interrupted upload stays resumable.
    pub ttl: Duration,
}

enum Slot {
    Live(Live),
    Parked {
        writer: Box<BlobWriter>,
        since: Instant,
    },
}

struct Live {
    id: u64,
    committed: Arc<AtomicU64>,
    /// Fired when a newer Write of the same upload takes over.
    superseded: CancellationToken,
    /// Woken when this stream's writer is parked or gone.
    ended: Arc<Notify>,
}

/// What a Write stream holds while it owns an upload.
pub struct LiveUpload {
    pub key: String,
    id: u64,
    /// Bytes written so far; the writer adds to it as it goes.
    pub committed: Arc<AtomicU64>,
    /// Cancelled when a newer Write of the same upload takes over: stop reading, end.
    pub superseded: CancellationToken,
}

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    next_id: u64,
    parked: usize,
    /// Set when the server stops: nothing is parked any more.
    closed: bool,
}

pub struct Uploads {
    // A std Mutex: map operations only, never held across an await.
    state: Mutex<State>,
    limits: UploadLimits,
}

/// What [`Uploads::begin`] found.
pub struct Begun {
    pub upload: LiveUpload,
    /// The interrupted upload's writer, to resume.
    pub resumed: Option<BlobWriter>,
}

impl Uploads {
    pub fn new(limits: UploadLimits) -> Self {
        Uploads {
            state: Mutex::default(),
            limits,
        }
    }

    /// Makes the upload `key` live for a new Write stream, taking over its parked writer.
    /// A stream still live for the same upload (its client gave up on it, and the server
    /// has not noticed yet) is told to stop, and this waits until it has parked its writer.
    pub async fn begin(&self, key: &str) -> Begun {
        loop {
            let ended = {
                let mut state = self.state.lock().unwrap();
                match state.slots.get(key) {
                    Some(Slot::Live(live)) => {
                        live.superseded.cancel();
                        live.ended.clone()
                    }
                    _ => return self.take_over(&mut state, key),
                }
            };
            let mut notified = pin!(ended.notified());
            notified.as_mut().enable();
            // The old stream may have ended between the unlock and `enable`.
            let still_live = matches!(
                self.state.lock().unwrap().slots.get(key),
                Some(Slot::Live(_))
            );
            if still_live {
                notified.await;
            }
        }
    }

    fn take_over(&self, state: &mut State, key: &str) -> Begun {
        let resumed = match state.slots.remove(key) {
            Some(Slot::Parked { writer, .. }) => {
                state.parked -= 1;
                Some(*writer)
            }
            _ => None,
        };
        state.next_id += 1;
        let live = Live {
            id: state.next_id,
            committed: Arc::new(AtomicU64::new(
                resumed.as_ref().map_or(0, BlobWriter::written),
            )),
            superseded: CancellationToken::new(),
            ended: Arc::new(Notify::new()),
        };
        let upload = LiveUpload {
            key: key.to_string(),
            id: live.id,
            committed: live.committed.clone(),
            superseded: live.superseded.clone(),
        };
        state.slots.insert(key.to_string(), Slot::Live(live));
        Begun { upload, resumed }
    }

    /// Ends a live upload: its writer is parked for resumption, or with `None` (committed,
    /// or not resumable) the upload is forgotten.
    pub fn end(&self, upload: &LiveUpload, writer: Option<BlobWriter>) {
        let mut state = self.state.lock().unwrap();
        let ours = matches!(
            state.slots.get(&upload.key),
            Some(Slot::Live(live)) if live.id == upload.id
        );
        if !ours {
            return;
        }
        let Some(Slot::Live(live)) = state.slots.remove(&upload.key) else {
            unreachable!("checked above")
        };
        if let Some(writer) = writer.filter(|_| !state.closed) {
            let now = Instant::now();
            self.make_room(&mut state, now);
            state.slots.insert(
                upload.key.clone(),
                Slot::Parked {
                    writer: Box::new(writer),
                    since: now,
                },
            );
            state.parked += 1;
        }
        live.ended.notify_waiters();
    }

    /// Drops expired parked uploads, then the oldest while the registry is full.
    fn make_room(&self, state: &mut State, now: Instant) {
        let ttl = self.limits.ttl;
        let before = state.slots.len();
        state.slots.retain(|_, slot| match slot {
            Slot::Parked { since, .. } => now.duration_since(*since) < ttl,
            Slot::Live(_) => true,
        });
        state.parked -= before - state.slots.len();
        while state.parked >= self.limits.max_parked.max(1) {
            let oldest = state
                .slots
                .iter()
                .filter_map(|(key, slot)| match slot {
                    Slot::Parked { since, .. } => Some((*since, key.clone())),
                    Slot::Live(_) => None,
                })
                .min();
            let Some((_, key)) = oldest else { break };
            state.slots.remove(&key);
            state.parked -= 1;
        }
    }

    /// Drops every interrupted upload (deleting its temp file) and parks none from now on.
    pub fn close(&self) {
        let mut state = self.state.lock().unwrap();
        state.closed = true;
        state.slots.retain(|_, slot| matches!(slot, Slot::Live(_)));
        state.parked = 0;
    }

    /// Bytes committed so far by the upload `key`, live or parked.
    pub fn committed(&self, key: &str) -> Option<u64> {
        match self.state.lock().unwrap().slots.get(key)? {
            Slot::Live(live) => Some(live.committed.load(Ordering::Acquire)),
            Slot::Parked { writer, .. } => Some(writer.written()),
        }
    }

    /// Uploads known: (live, parked).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        (state.slots.len() - state.parked, state.parked)
    }
}
