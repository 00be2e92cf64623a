//! Who holds each semantic lock and who waits for it, for operators
//! (`sagaflow locks`, `sagaflow status`, `GET /v1/locks`): read-only, with
//! the commands a viewer may send (see `sagaflow acl`).
//!
//! A lock's queue is the truth (see [`crate::store::locks`]); the sagas'
//! records only say which locks there are: no lock is found by a scan of
//! the keyspace. A listing of every lock looks at the sagas that may hold
//! one (running, compensating, failed), the [`MAX_SAGAS_LOOKED_AT`] that
//! entered those phases last, running and compensating ones first, and
//! reads the queues of at most [`MAX_LOCKS_LISTED`] locks.

use super::MAX_LISTED;
use crate::config::Settings;
use crate::protocol::locks::LockEntry;
use crate::saga::SagaState;
use crate::store::keys::Keys;
use crate::store::{locks, sagas};
use redis::aio::ConnectionLike;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Sagas whose records a listing looks at, at most: as many as `list`
/// looks at.
pub const MAX_SAGAS_LOOKED_AT: usize = MAX_LISTED;

/// Locks whose queues one listing (or one command line) reads, at most:
/// each read is two round trips and up to
/// [`MAX_LOCK_QUEUE`](crate::protocol::locks::MAX_LOCK_QUEUE) entries.
pub const MAX_LOCKS_LISTED: usize = 1_000;

/// One lock's queue: who holds it, who waits for it, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub lock: String,
    /// `None` when nobody holds the lock.
    pub holder: Option<Holder>,
    /// The sagas waiting, first to get it first (at most
    /// [`MAX_LOCK_QUEUE`](crate::protocol::locks::MAX_LOCK_QUEUE) less the
    /// holder).
    pub waiters: Vec<LockEntry>,
}

/// The saga holding a lock: its entry (`since_ms`: when it asked), and
/// when it took the lock as its record says, when the record was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    #[serde(flatten)]
    pub entry: LockEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_since_ms: Option<u64>,
}

impl Queue {
    fn of(lock: &str, entries: Vec<LockEntry>) -> Self {
        let mut entries = entries.into_iter();
        Self {
            lock: lock.to_owned(),
            holder: entries.next().map(|entry| Holder {
                entry,
                held_since_ms: None,
            }),
            waiters: entries.collect(),
        }
    }

    /// How many sagas are before `saga_id` (the holder included), and
    /// `None` when it is not in the queue.
    pub fn ahead_of(&self, saga_id: &str) -> Option<usize> {
        let all = self.holder.iter().map(|h| &h.entry).chain(&self.waiters);
        all.map(|e| e.saga_id.as_str()).position(|id| id == saga_id)
    }
}

/// Every lock found, and how far the search went.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// By name; none that nobody holds or waits for.
    pub locks: Vec<Queue>,
    /// Saga records looked at.
    pub looked_at: usize,
    /// False when a bound cut the search: more sagas than
    /// [`MAX_SAGAS_LOOKED_AT`] may hold locks, or more locks than
    /// [`MAX_LOCKS_LISTED`] were found.
    pub complete: bool,
}

/// The locks a saga holds, and the one each of its steps asks for now.
pub fn names_of(state: &SagaState) -> impl Iterator<Item = &str> {
    let held = state.locks.keys().map(String::as_str);
    let asked = (state.work.steps.values())
        .filter_map(|w| w.locking.as_ref()?.pending.first())
        .map(String::as_str);
    held.chain(asked)
}

/// The queues of `names`, in that order (at most [`MAX_LOCKS_LISTED`]),
/// each holder's `held_since_ms` read from its record.
pub async fn queues<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    names: &[String],
) -> Result<Vec<Queue>, String> {
    let keys = Keys::of(settings);
    let mut out = Vec::new();
    for name in names.iter().take(MAX_LOCKS_LISTED) {
        out.push(read_queue(conn, &keys, name).await?);
    }
    held_since(conn, &keys, &mut out, &BTreeMap::new()).await?;
    Ok(out)
}

async fn read_queue<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> Result<Queue, String> {
    let entries = locks::queue(conn, keys, name)
        .await
        .map_err(|e| format!("cannot read lock `{name}`: {e}"))?;
    Ok(Queue::of(name, entries))
}

/// Fills in when each holder took its lock: from `known` (lock name, saga
/// id) when there, else from the holders' records.
async fn held_since<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queues: &mut [Queue],
    known: &BTreeMap<(String, String), u64>,
) -> Result<(), String> {
    let mut unknown: Vec<String> = Vec::new();
    for q in queues.iter_mut() {
        let Some(h) = q.holder.as_mut() else { continue };
        match known.get(&(q.lock.clone(), h.entry.saga_id.clone())) {
            Some(&at) => h.held_since_ms = Some(at),
            None => unknown.push(h.entry.saga_id.clone()),
        }
    }
    unknown.sort();
    unknown.dedup();
    // Ids come from Redis: only a well-formed one names a record.
    unknown.retain(|id| crate::protocol::SagaId::parse(id).is_some());
    if unknown.is_empty() {
        return Ok(());
    }
    let records = sagas::records(conn, keys, &unknown)
        .await
        .map_err(|e| format!("cannot read the sagas holding locks: {e}"))?;
    let states: BTreeMap<&str, &SagaState> = (unknown.iter())
        .zip(&records)
        .filter_map(|(id, r)| Some((id.as_str(), &r.as_ref()?.state)))
        .collect();
    for q in queues.iter_mut() {
        let Some(h) = q.holder.as_mut().filter(|h| h.held_since_ms.is_none()) else {
            continue;
        };
        let held = states.get(h.entry.saga_id.as_str());
        h.held_since_ms = held.and_then(|s| s.locks.get(&q.lock)).map(|l| l.since_ms);
    }
    Ok(())
}

/// Every lock that a saga not ended (or failed, keeping its locks) holds
/// or waits for, by name, found from their records (see the module's
/// bounds).
pub async fn listing<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
) -> Result<Listing, String> {
    let keys = Keys::of(settings);
    let mut complete = true;
    let mut ids = Vec::new();
    // Running and compensating sagas first: they are the ones whose locks
    // change; failed ones keep theirs until an operator acts.
    for phases in [&["running", "compensating"][..], &["failed"]] {
        let room = MAX_SAGAS_LOOKED_AT - ids.len();
        if room == 0 {
            complete = false;
            break;
        }
        let mut found = sagas::ids(conn, &keys, phases, room + 1)
            .await
            .map_err(|e| format!("cannot list sagas: {e}"))?;
        if found.len() > room {
            found.truncate(room);
            complete = false;
        }
        ids.extend(found);
    }
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut known: BTreeMap<(String, String), u64> = BTreeMap::new();
    for chunk in ids.chunks(sagas::RECORDS_PER_PIPELINE) {
        let records = sagas::records(conn, &keys, chunk)
            .await
            .map_err(|e| format!("cannot read sagas: {e}"))?;
        for record in records.into_iter().flatten() {
            let s = &record.state;
            for name in names_of(s) {
                if names.contains(name) {
                    continue;
                }
                if names.len() == MAX_LOCKS_LISTED {
                    complete = false;
                    continue;
                }
                names.insert(name.to_owned());
            }
            // When each lock listed was taken: one holder a lock, mostly.
            for (name, held) in s.locks.iter().filter(|(n, _)| names.contains(*n)) {
                known.insert((name.clone(), s.saga_id.to_string()), held.since_ms);
            }
        }
    }
    let mut locks = Vec::new();
    for name in &names {
        let queue = read_queue(conn, &keys, name).await?;
        // Let go of since the record was read.
        if queue.holder.is_some() {
            locks.push(queue);
        }
    }
    held_since(conn, &keys, &mut locks, &known).await?;
    Ok(Listing {
        locks,
        looked_at: ids.len(),
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> LockEntry {
        LockEntry {
            saga_id: id.into(),
            saga: "s".into(),
            step: "a".into(),
            since_ms: 1,
        }
    }

    #[test]
    fn the_first_entry_holds_and_the_others_wait_in_order() {
        let q = Queue::of("robot:7", vec![entry("a"), entry("b"), entry("c")]);
        assert_eq!(q.holder.as_ref().unwrap().entry.saga_id, "a");
        assert_eq!(q.waiters.len(), 2);
        assert_eq!(q.ahead_of("a"), Some(0));
        assert_eq!(q.ahead_of("c"), Some(2));
        assert_eq!(q.ahead_of("d"), None);
        let free = Queue::of("robot:8", Vec::new());
        assert!(free.holder.is_none() && free.waiters.is_empty());
        let shown = serde_json::to_value(&q).unwrap();
        assert_eq!(shown["holder"]["saga_id"], "a");
        assert!(shown["holder"].get("held_since_ms").is_none());
        assert_eq!(shown["waiters"][1]["saga_id"], "c");
    }
}
