//! Saga names paused by operators (`sagaflow pause --name`): while a name
//! is paused, every start of it read from a trigger stream is held, not
//! turned into a saga; once it is resumed, the starts held are taken in
//! the order they were written, each once, and then new starts flow again.
//! Sagas of the name already running go on: operators pause those one by
//! one.
//!
//! How (the keys and scripts are [`crate::store::holds`]'s):
//! - **What is paused** is one hash in Redis, name to who paused it, why
//!   and since when; each trigger stream has, in its own slot, its holds:
//!   the names whose starts read from it are held.
//! - **Holding**: the intake and the takeover of dead daemons' starts pass
//!   every entry they read through [`sieve`], one script per trigger
//!   stream and read, which copies the entries of held names to the name's
//!   held stream and acknowledges them on the trigger stream at once. So a
//!   held start is never pending on the trigger stream: no delivery of it
//!   is counted toward `max_deliveries`, nothing dead-letters it however
//!   long it waits, and a daemon killed after holding it leaves nothing to
//!   take over. The check is made in Redis when the entry is read, so a
//!   start read after the pause is in effect is held, whichever daemon
//!   reads it and however stale its own view.
//! - **Resuming**: the name stays in the holds, `draining`, while its held
//!   stream has starts; the [`run`] task of every daemon reads them through
//!   the daemons' group (each start to one daemon; those a dead daemon read
//!   are taken over as trigger entries are), and new starts of the name
//!   keep joining the held stream behind them, so that all are taken in
//!   order. Once the group has taken every one, the name leaves the holds.
//!   A held start's saga id is that of the entry it was written as.
//! - **Requests**: every daemon reads an operator's request about a name;
//!   the first to record its nonce carries it out (it records the pause,
//!   then the holds of each trigger stream it reads) and answers on
//!   `saga:events` ([`super::name_requests`]). Every second each daemon
//!   compares the holds of its trigger streams with what is paused and
//!   mends what differs: a request half carried out by a daemon killed on
//!   the way is completed, and a daemon reading a trigger stream the
//!   others do not holds on it too.

use super::{intake, pause, Shared};
use crate::protocol::control::check_saga_name;
use crate::protocol::fields as f;
use crate::protocol::limits::MAX_START_ENTRY_BYTES;
use crate::protocol::{CorrelationId, StartError};
use crate::retry::{retry, Outage, Policy, Tried};
use crate::store::holds::{
    self as store, Change, Expected, Held, Sieved, DRAINING, MAX_HELD_FIELDS,
};
use crate::store::keys::Keys;
use crate::store::EntryRef;
use crate::streams::Entry;
use crate::telemetry::metrics;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};

/// How often each daemon reads what is paused and what its trigger streams
/// hold, and mends what differs: a few short reads a second per daemon.
const REFRESH: Duration = Duration::from_secs(1);

/// How often held streams being drained are looked at when the last read
/// found nothing: starts of the name other daemons hold meanwhile join them.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What a daemon knows of the names held.
#[derive(Default)]
pub(crate) struct Holds {
    /// The held streams whose names are resumed: read until taken, as
    /// found at the last refresh.
    draining: RwLock<Vec<Held>>,
    /// Wakes [`run`]: a resume was carried out here.
    pub(super) wake: Notify,
    /// One request about a name carried out at a time by this daemon.
    pub(super) acting: Mutex<()>,
}

impl Holds {
    /// The held streams to read now.
    pub fn draining(&self) -> Vec<Held> {
        self.draining.read().expect("holds lock").clone()
    }

    fn set_draining(&self, held: Vec<Held>) {
        *self.draining.write().expect("holds lock") = held;
    }
}

/// The name of the saga an entry of a trigger stream starts, when it can
/// be told: its `saga` field, or the definition bound to the stream.
fn name_of(shared: &Shared, entry: &Entry) -> Option<String> {
    if entry.malformed.is_some() {
        return None;
    }
    match crate::protocol::text_field(&entry.fields, f::SAGA) {
        Ok(Some(name)) => check_saga_name(name).ok().map(|()| name.to_owned()),
        Ok(None) => (shared.catalog.for_trigger(&entry.stream)).map(|def| def.name.clone()),
        Err(_) => None,
    }
}

/// Holds the entries read from trigger streams whose saga names are held
/// there (see the module's docs), and returns the others, to be taken. An
/// entry too large to copy whole is left to be taken (and rejected for its
/// size); one with more fields than a held start may have is rejected
/// here. While Redis fails, the sieve is tried again; if Redis refuses it
/// for good, every entry is taken. On a stop, nothing is returned: the
/// entries stay pending, to be taken over.
pub(super) async fn sieve(shared: &Arc<Shared>, entries: Vec<Entry>) -> Vec<Entry> {
    if entries.is_empty() {
        return entries;
    }
    let keys = Keys::of(&shared.settings);
    let group = shared.settings.trigger_group.as_str();
    let mut outcomes = vec![Sieved::Take; entries.len()];
    let mut streams: Vec<&str> = Vec::new();
    for entry in &entries {
        if !streams.contains(&entry.stream.as_str()) {
            streams.push(&entry.stream);
        }
    }
    for stream in streams {
        let at: Vec<usize> = (0..entries.len())
            .filter(|i| entries[*i].stream == stream)
            .collect();
        let names: Vec<Option<String>> = at.iter().map(|i| name_of(shared, &entries[*i])).collect();
        let list: Vec<(&str, Option<&str>)> = at
            .iter()
            .zip(&names)
            .map(|(i, name)| (entries[*i].id.as_str(), name.as_deref()))
            .collect();
        let call = || {
            let (mut conn, keys, list) = (shared.conn.clone(), &keys, &list);
            async move {
                store::sieve(&mut conn, keys, stream, group, list, MAX_START_ENTRY_BYTES).await
            }
        };
        match retry(&shared.shutdown, Policy::WRITES, &shared.writes, call).await {
            Tried::Done(sieved) => {
                for (i, outcome) in at.iter().zip(sieved) {
                    outcomes[*i] = outcome;
                }
            }
            Tried::Refused(e) => {
                tracing::error!(%stream, error = %e, "cannot look whether starts are held; they are taken");
            }
            Tried::Stopped => return Vec::new(),
        }
    }
    let mut take = Vec::new();
    for (entry, outcome) in entries.into_iter().zip(outcomes) {
        match outcome {
            Sieved::Take => take.push(entry),
            Sieved::Held => {
                tracing::debug!(stream = %entry.stream, entry_id = %entry.id, "start held: its saga name is paused");
            }
            Sieved::TooManyFields => {
                let name = name_of(shared, &entry).unwrap_or_default();
                let at = EntryRef::new(&entry.stream, &entry.id);
                let error = StartError {
                    reason: format!(
                        "saga `{name}` is paused and this start cannot be held: it has more than \
                         {MAX_HELD_FIELDS} fields"
                    ),
                    correlation_id: crate::protocol::text_field(&entry.fields, f::CORRELATION_ID)
                        .ok()
                        .flatten()
                        .and_then(|c| CorrelationId::parse(c).ok()),
                };
                intake::reject(shared, &at, error, &name).await;
            }
        }
    }
    take
}

/// Takes the starts held of resumed names, and keeps this daemon's view of
/// what is held fresh (mending the holds on the way), until the daemon
/// stops.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut conn = shared.conn.clone();
    let outage = Outage::new("taking the starts held of resumed saga names")
        .metered(metrics::redis_meter("holds"));
    let mut refreshed_at: Option<Instant> = None;
    while !shared.shutdown.is_cancelled() {
        if refreshed_at.is_none_or(|at| at.elapsed() >= REFRESH) {
            let result = refresh(&shared, &mut conn).await;
            outage.record(&result);
            refreshed_at = Some(Instant::now());
        }
        let draining = shared.holds.draining();
        if draining.is_empty() {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = shared.holds.wake.notified() => refreshed_at = None,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            continue;
        }
        let room = shared
            .permits
            .available_permits()
            .min(shared.settings.read_batch);
        if room == 0 {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                permit = shared.permits.clone().acquire_owned() => drop(permit),
            }
            continue;
        }
        let keys = Keys::of(&shared.settings);
        let read = store::read_held(
            &mut conn,
            &keys,
            &draining,
            &shared.settings.trigger_group,
            &shared.settings.node_id,
            room,
            MAX_START_ENTRY_BYTES,
        )
        .await;
        match read {
            Ok(entries) if entries.is_empty() => {
                let result = release(&shared, &mut conn, &draining).await;
                outage.record(&result);
                if !pause(&shared.shutdown, DRAIN_POLL).await {
                    return;
                }
            }
            Ok(entries) => {
                outage.record(&Ok::<(), redis::RedisError>(()));
                for entry in entries {
                    let Some(held) = draining.iter().find(|h| h.stream == entry.stream) else {
                        continue;
                    };
                    let trigger = held.trigger.clone();
                    intake::take_held(&shared, entry, &trigger).await;
                }
            }
            Err(e) if super::is_nogroup(&e) => {
                for held in &draining {
                    let created =
                        store::create_group(&mut conn, held, &shared.settings.trigger_group);
                    if let Err(e) = created.await {
                        tracing::warn!(stream = %held.stream, error = %e, "cannot create the group of a held stream");
                    }
                }
            }
            Err(e) => {
                outage.record(&Err::<(), _>(e));
                if !pause(&shared.shutdown, shared.settings.block).await {
                    return;
                }
            }
        }
    }
}

/// Lets names whose held starts were all taken leave the holds.
async fn release(
    shared: &Shared,
    conn: &mut crate::connection::Conn,
    draining: &[Held],
) -> redis::RedisResult<()> {
    let keys = Keys::of(&shared.settings);
    let group = &shared.settings.trigger_group;
    let mut left = Vec::new();
    for held in draining {
        if store::release(conn, &keys, held, group).await? {
            tracing::info!(saga = %held.name, stream = %held.trigger, "every start held of a resumed saga name was taken; its starts are taken directly again");
        } else {
            left.push(held.clone());
        }
    }
    if left.len() < draining.len() {
        shared.holds.set_draining(left);
    }
    Ok(())
}

/// Reads what is paused and what each trigger stream holds, mends the
/// holds that differ from what is paused (see [`store::Expected`]), and
/// keeps the held streams to read.
async fn refresh(shared: &Shared, conn: &mut crate::connection::Conn) -> redis::RedisResult<()> {
    let keys = Keys::of(&shared.settings);
    let streams = super::trigger_streams(&shared.settings, &shared.catalog);
    // The holds first, then what is paused: a pause records itself before
    // its holds, so holds read before it cannot be taken for a pause undone.
    let mut holds = Vec::new();
    for stream in streams.iter().filter(|s| store::can_hold(&keys, s)) {
        holds.push((stream, store::holds_of(conn, &keys, stream).await?));
    }
    let paused = store::paused_raw(conn, &keys).await?;
    let mut draining = Vec::new();
    for (stream, held_here) in holds {
        for (name, pause) in &paused {
            let now = held_here.get(name).map(String::as_str);
            if now != Some(pause.as_str()) {
                let expected = Expected::Exactly(now);
                if store::change_hold(conn, &keys, stream, name, expected, Change::Pause(pause))
                    .await?
                {
                    tracing::warn!(saga = %name, %stream, "saga name paused on a trigger stream that did not hold it yet");
                }
            }
        }
        for (name, value) in &held_here {
            if paused.contains_key(name) {
                continue;
            }
            if value != DRAINING {
                let expected = Expected::Exactly(Some(value));
                if store::change_hold(conn, &keys, stream, name, expected, Change::Resume).await? {
                    tracing::warn!(saga = %name, %stream, "saga name resumed on a trigger stream that still held it");
                }
            }
            if let Some(held) = Held::new(&keys, stream, name) {
                draining.push(held);
            }
        }
    }
    shared.holds.set_draining(draining);
    Ok(())
}
