//! Intake: reads the trigger streams through the consumer group, turns each
//! valid entry into a saga task and answers each bad one with a
//! `saga_rejected` event. Never stops on bad input. Reads are bounded: at
//! most `read_batch` entries (and no more than there are free saga
//! permits), each at most [`MAX_START_ENTRY_BYTES`]; a larger entry never leaves
//! Redis whole and is rejected by its size. The starts of saga names an
//! operator paused are held, not taken ([`super::holds`]).

use super::driver::{self, WriteOutcome};
use super::reconnect::ReadConnection;
use super::Shared;
use crate::protocol::limits::{too_large, MAX_START_ENTRY_BYTES};
use crate::protocol::{CorrelationId, EventType, SagaEvent, SagaStatus, StartError, StartRequest};
use crate::store::holds::HELD_FROM;
use crate::store::read::{self, oversized};
use crate::store::{EntryRef, Transition};
use crate::streams::Entry;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Reads starts until the daemon stops. A read under way is never
/// abandoned (an abandoned XREADGROUP stays live on the server and can move
/// an entry into our pending list unseen): it ends within `block`, and
/// what it took is created, under the lease still held, before the lease
/// keeper gives the lease up.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut triggers = super::trigger_streams(&shared.settings, &shared.catalog);
    let mut conn = ReadConnection::new("starts");
    // Whether the last read took everything: the next one then waits.
    let mut drained = false;
    while !shared.shutdown.is_cancelled() {
        // Take no more entries than there is room for sagas.
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
        let Some(c) = conn.get(&shared).await else {
            return;
        };
        let reply = read::group(
            c,
            &triggers,
            &shared.settings.trigger_group,
            &shared.settings.node_id,
            room,
            shared.settings.block,
            MAX_START_ENTRY_BYTES,
            drained,
        )
        .await;
        drained = false;
        match reply {
            Ok(read) => {
                conn.succeeded();
                drained = read.drained;
                for entry in super::holds::sieve(&shared, read.entries).await {
                    take(&shared, entry).await;
                }
            }
            Err(e) if super::is_nogroup(&e) => recreate_groups(&shared).await,
            Err(e) if crate::retry::is_permanent(&e) => {
                // A trigger stream replaced by another kind of key: read
                // the others.
                let names: Vec<&str> = triggers.iter().map(String::as_str).collect();
                let bad: HashSet<String> = match conn.get(&shared).await {
                    Some(c) => read::not_streams(c, &names).await.unwrap_or_default(),
                    None => return,
                }
                .into_iter()
                .collect();
                tracing::error!(streams = ?bad, error = %e, "trigger streams that are not streams are no longer read");
                triggers.retain(|t| !bad.contains(t));
                if bad.is_empty() && !conn.failed(&shared, &e).await {
                    return;
                }
            }
            Err(e) => {
                if !conn.failed(&shared, &e).await {
                    return;
                }
            }
        }
    }
}

/// Creates the trigger groups again after Redis lost them.
async fn recreate_groups(shared: &Shared) {
    tracing::warn!(
        "the trigger consumer groups are gone (Redis lost its data?); creating them again"
    );
    let mut conn = shared.conn.clone();
    if let Err(e) = super::create_groups(&mut conn, &shared.settings, &shared.catalog).await {
        tracing::warn!(error = %e, "cannot create the trigger groups yet");
        super::pause(&shared.shutdown, shared.settings.block).await;
    }
}

/// Starts a saga for a valid entry, rejects a bad one; waits for a saga
/// permit first.
pub(super) async fn take(shared: &Arc<Shared>, entry: Entry) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    take_with(shared, entry, permit).await;
}

/// [`take`], with the permit in hand.
pub(super) async fn take_with(shared: &Arc<Shared>, entry: Entry, permit: OwnedSemaphorePermit) {
    let at = EntryRef::new(&entry.stream, &entry.id);
    take_at(shared, entry, at, permit).await
}

/// [`take`] for an entry of a held stream (see [`super::holds`]): a start
/// first written on `trigger` and held while its saga name was paused.
/// Its saga id and its events are those of the entry it was written as;
/// it is acknowledged (or dead-lettered) on the held stream.
pub(super) async fn take_held(shared: &Arc<Shared>, mut entry: Entry, trigger: &str) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    // Only the daemons write held streams: the field is theirs.
    let from = entry
        .fields
        .remove(HELD_FROM)
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|id| crate::streams::StreamId::parse(id).is_some());
    let at = EntryRef {
        stream: entry.stream.clone(),
        id: entry.id.clone(),
        written_as: from.map(|id| (trigger.to_owned(), id)),
    };
    take_at(shared, entry, at, permit).await
}

async fn take_at(shared: &Arc<Shared>, entry: Entry, at: EntryRef, permit: OwnedSemaphorePermit) {
    let named = |field: &str| {
        crate::protocol::text_field(&entry.fields, field)
            .ok()
            .flatten()
            .unwrap_or_default()
            .chars()
            .take(128)
            .collect::<String>()
    };
    if let Some(why) = &entry.malformed {
        let error = StartError {
            reason: why.clone(),
            correlation_id: None,
        };
        return reject(shared, &at, error, "").await;
    }
    if let Some(size) = oversized(&entry) {
        let error = StartError {
            reason: too_large("start entry", size, MAX_START_ENTRY_BYTES),
            correlation_id: CorrelationId::parse(&named(crate::protocol::fields::CORRELATION_ID))
                .ok(),
        };
        return reject(shared, &at, error, &named(crate::protocol::fields::SAGA)).await;
    }
    let request = match StartRequest::from_fields(&entry.fields) {
        Ok(r) => r,
        Err(e) => return reject(shared, &at, e, &named(crate::protocol::fields::SAGA)).await,
    };
    drop(entry);
    let def = match &request.saga {
        Some(name) => shared.catalog.get(name).cloned().ok_or_else(|| {
            format!(
                "unknown saga `{name}`; loaded sagas: {}",
                shared.catalog.names().join(", ")
            )
        }),
        None => shared
            .catalog
            .for_trigger(at.start().0)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "no saga is bound to trigger stream `{}`; name one in the `saga` field",
                    at.start().0
                )
            }),
    };
    let def = match def {
        Ok(def) => def,
        Err(reason) => {
            let saga = request.saga.clone().unwrap_or_default();
            let error = StartError {
                reason,
                correlation_id: Some(request.correlation_id.clone()),
            };
            return reject(shared, &at, error, &saga).await;
        }
    };
    let creating = shared.creating.token();
    shared.tracker.spawn(driver::start(
        shared.clone(),
        def,
        request,
        at,
        permit,
        creating,
    ));
}

pub(super) async fn reject(shared: &Shared, at: &EntryRef, error: StartError, saga: &str) {
    let (stream, entry_id) = at.start();
    tracing::warn!(%entry_id, %stream, reason = %error.reason, "start rejected");
    let event = SagaEvent {
        correlation_id: error.correlation_id.unwrap_or_else(CorrelationId::generate),
        saga_id: None,
        saga: saga.to_owned(),
        event_type: EventType::SagaRejected,
        status: SagaStatus::Rejected,
        step: None,
        branch: None,
        payload: json!({ "entry_id": entry_id, "stream": stream, "reason": error.reason }),
        timestamp: shared.now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ack: Some(at),
        ..Default::default()
    };
    match driver::write_until_done(shared, &transition, None).await {
        Ok(_) => crate::telemetry::metrics::saga_rejected(saga),
        Err(WriteOutcome::Refused(e)) => {
            let reason = format!("{} (the rejection cannot be recorded: {e})", error.reason);
            driver::dead_letter_entry(shared, at, &reason).await;
        }
        Err(WriteOutcome::Stopped) => {}
    }
}
