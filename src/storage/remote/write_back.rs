//! The write-back queue: uploads acknowledged on local durability and sent to the bucket
//! later. Each entry is a small file under `remote-queue/` in the data directory, written
//! (and synced, with `storage.fsync`) before the upload is acknowledged, and removed once
//! the object store has the object; so the queue survives a crash and a restart. A queued
//! blob is leased in the local CAS, so eviction cannot drop it before it is uploaded.
//!
//! Entry files hold either `blob {function} {hash} {size}` (the bytes are the local blob)
//! or `object {key}`, a newline, and the object's bytes (action results and asset records,
//! which are small).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::digest::{Digest, DigestFunction};
use crate::error::Error;
use crate::storage::{Cas, Lease, write_atomic};

/// One upload waiting.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Blob(Digest),
    Object { key: String, body: Bytes },
}

impl Pending {
    /// The entry's identity: the same upload queued twice is one entry.
    fn id(&self) -> String {
        let name = match self {
            Pending::Blob(d) => {
                format!("blob {} {} {}", d.function().name(), d.hash_hex(), d.size())
            }
            Pending::Object { key, .. } => format!("object {key}"),
        };
        hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16])
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Pending::Blob(d) => format!(
                "blob {} {} {}\n",
                d.function().name(),
                d.hash_hex(),
                d.size()
            )
            .into_bytes(),
            Pending::Object { key, body } => {
                let mut out = format!("object {key}\n").into_bytes();
                out.extend_from_slice(body);
                out
            }
        }
    }

    fn decode(data: &[u8]) -> Option<Pending> {
        let newline = data.iter().position(|&b| b == b'\n')?;
        let head = std::str::from_utf8(&data[..newline]).ok()?;
        let body = &data[newline + 1..];
        let mut words = head.split(' ');
        match words.next()? {
            "blob" => {
                let function = DigestFunction::from_name(words.next()?)?;
                let hash = words.next()?;
                let size = words.next()?.parse().ok()?;
                Digest::parse(function, hash, size).ok().map(Pending::Blob)
            }
            "object" => Some(Pending::Object {
                key: head["object ".len()..].to_string(),
                body: Bytes::copy_from_slice(body),
            }),
            _ => None,
        }
    }
}

use sha2::Digest as _;

struct Entry {
    pending: Pending,
    /// Keeps a queued blob in the local CAS until it is uploaded.
    _lease: Option<Lease>,
}

pub struct WriteBack {
    dir: PathBuf,
    tmp_dir: PathBuf,
    fsync: bool,
    max_entries: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken when an entry is queued, so the uploader need not poll.
    pub queued: Notify,
}

impl WriteBack {
    /// Opens the queue under `data_dir`, taking up the entries a previous run left. Blocking.
    pub fn open(
        data_dir: &Path,
        cas: &Cas,
        fsync: bool,
        max_entries: usize,
    ) -> Result<Self, Error> {
        let dir = crate::storage::layout::write_back(data_dir);
        crate::storage::ensure_private_dir(&dir)?;
        let queue = WriteBack {
            tmp_dir: crate::storage::layout::tmp(data_dir),
            dir,
            fsync,
            max_entries,
            entries: Mutex::new(HashMap::new()),
            queued: Notify::new(),
        };
        let listing = std::fs::read_dir(&queue.dir)
            .map_err(|e| Error::io(format!("listing {}", queue.dir.display()), e))?;
        let mut entries = queue.entries.lock().expect("queue lock");
        for file in listing.flatten() {
            let path = file.path();
            let pending = std::fs::read(&path).ok().and_then(|d| Pending::decode(&d));
            match pending {
                Some(Pending::Blob(d)) if !cas.contains(&d) => {
                    tracing::error!(digest = %d, "a queued upload's blob is gone from the local disk; it cannot reach the object store");
                    let _ = std::fs::remove_file(&path);
                }
                Some(pending) => {
                    let lease = match &pending {
                        Pending::Blob(d) => Some(cas.lease(vec![*d])),
                        Pending::Object { .. } => None,
                    };
                    entries.insert(
                        pending.id(),
                        Entry {
                            pending,
                            _lease: lease,
                        },
                    );
                }
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable write-back entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if !entries.is_empty() {
            tracing::info!(
                entries = entries.len(),
                "write-back uploads left by the last run are queued again"
            );
        }
        drop(entries);
        Ok(queue)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("queue lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Persists `pending` and queues it; `false` (nothing queued) when the queue is full,
    /// and the caller writes through instead. Blocking.
    pub fn push(&self, cas: &Cas, pending: Pending) -> Result<bool, Error> {
        let id = pending.id();
        {
            let entries = self.entries.lock().expect("queue lock");
            if entries.contains_key(&id) {
                return Ok(true);
            }
            if entries.len() >= self.max_entries {
                return Ok(false);
            }
        }
        write_atomic(
            &self.tmp_dir,
            &self.dir.join(&id),
            &pending.encode(),
            self.fsync,
        )?;
        let lease = match &pending {
            Pending::Blob(d) => Some(cas.lease(vec![*d])),
            Pending::Object { .. } => None,
        };
        self.entries.lock().expect("queue lock").insert(
            id,
            Entry {
                pending,
                _lease: lease,
            },
        );
        self.queued.notify_one();
        Ok(true)
    }

    /// Up to `n` waiting uploads, oldest order not guaranteed.
    pub fn peek(&self, n: usize) -> Vec<Pending> {
        let entries = self.entries.lock().expect("queue lock");
        entries
            .values()
            .take(n)
            .map(|e| e.pending.clone())
            .collect()
    }

    /// Removes an uploaded entry, releasing its lease.
    pub fn done(&self, pending: &Pending) {
        let id = pending.id();
        let _ = std::fs::remove_file(self.dir.join(&id));
        self.entries.lock().expect("queue lock").remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::CasOptions;

    #[test]
    fn entries_survive_a_restart_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(dir.path(), CasOptions::default()).unwrap();
        let d = Digest::of(DigestFunction::Sha256, b"queued");
        cas.put(&d, b"queued").unwrap();
        let queue = WriteBack::open(dir.path(), &cas, false, 2).unwrap();
        let object = Pending::Object {
            key: "ac/_/sha256/x-1".into(),
            body: Bytes::from_static(b"\x01\n\x02"),
        };
        assert!(queue.push(&cas, Pending::Blob(d)).unwrap());
        assert!(
            queue.push(&cas, Pending::Blob(d)).unwrap(),
            "a repeat is one entry"
        );
        assert!(queue.push(&cas, object.clone()).unwrap());
        let third = Pending::Blob(Digest::empty(DigestFunction::Sha256));
        assert!(
            !queue.push(&cas, third).unwrap(),
            "full: write through instead"
        );
        assert_eq!(queue.len(), 2);
        drop(queue);

        let queue = WriteBack::open(dir.path(), &cas, false, 2).unwrap();
        let mut found = queue.peek(10);
        found.sort_by_key(|p| matches!(p, Pending::Object { .. }));
        assert_eq!(found, vec![Pending::Blob(d), object.clone()]);
        queue.done(&object);
        drop(queue);
        let queue = WriteBack::open(dir.path(), &cas, false, 2).unwrap();
        assert_eq!(queue.peek(10), vec![Pending::Blob(d)]);
    }
}
