//! The signals forwarder: every daemon reads the signals stream
//! (`signals_stream`, `saga:signals`) through the daemons' consumer group
//! (`trigger_group`) and keeps each signal for its saga
//! ([`signals::accept`]), where the saga's `wait` step finds it the next
//! time its daemon asks ([`super::asks`]). What became of each entry is an
//! event of the saga, written with the entry's acknowledgement:
//! `signal_received` (kept, or `duplicate` of one kept), or
//! `signal_rejected` with the reason (`refused`). Bad input never stops it:
//! an entry that does not read, names no saga or a saga not running, or
//! meets a key of the wrong kind is rejected and acknowledged.
//!
//! Reads are bounded: at most [`SIGNALS_BATCH`] entries, each at most
//! [`MAX_SIGNAL_ENTRY_BYTES`] (a larger one never leaves Redis whole and is
//! rejected by its size). A daemon that dies with signals read and not
//! acknowledged leaves them pending in the group: any daemon takes them
//! over once idle for [`CLAIM_IDLE_LEASES`] leases. Keeping a signal twice
//! is harmless (the second time it is a duplicate).

use super::driver::{self, WriteOutcome};
use super::reconnect::ReadConnection;
use super::{EngineError, Shared};
use crate::connection::Conn;
use crate::protocol::fields as f;
use crate::protocol::limits::too_large;
use crate::protocol::payload::SignalNote;
use crate::protocol::signal::{
    KeptSignal, SignalRequest, BY, MAX_SIGNAL_ENTRY_BYTES, SIGNAL, SIGNAL_ID,
};
use crate::protocol::{CorrelationId, EventType, SagaEvent, SagaId, SagaStatus};
use crate::retry::{retry, Outage, Policy, Tried};
use crate::store::groups::{self, Created};
use crate::store::keys::Keys;
use crate::store::signals::{self, Accepted, SagaOfSignal, SignalError};
use crate::store::{maintain, read, EntryRef, Transition};
use crate::streams::{Entry, StreamId};
use crate::telemetry::metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Signals read at once. A signal costs a few round trips (keep it, name
/// its saga, write its event); a flood is read a batch at a time.
pub const SIGNALS_BATCH: usize = 100;

/// How many leases (`lease_ttl`) a signal read by a daemon may stay
/// unacknowledged before another daemon takes it over (30 s with the
/// default lease): a live daemon acknowledges a batch within a few writes
/// each, and one that holds signals that long has died, or lost Redis for
/// longer than its lease (its sagas are taken over too).
pub const CLAIM_IDLE_LEASES: u32 = 3;

/// How often, at most, the pending signals of daemons that died are
/// looked for (every lease when that is shorter).
const CLAIM_EVERY: Duration = Duration::from_secs(5);

/// Longest text of a rejected entry's field that its event repeats.
const NOTED_CHARS: usize = 128;

/// Creates the daemons' group on the signals stream at id 0 (signals
/// written before any daemon ran are read too). A key of another kind in
/// the stream's place does not stop the daemon: the forwarder tells of it
/// while it lasts.
pub(super) async fn create_group(
    conn: &mut Conn,
    settings: &crate::config::Settings,
) -> Result<(), EngineError> {
    let (stream, group) = (&settings.signals_stream, &settings.trigger_group);
    match groups::create(conn, stream, group).await {
        Ok(Created::Created | Created::Existed) => Ok(()),
        Err(e) if crate::retry::is_permanent(&e) => {
            tracing::error!(%stream, error = %e, "the signals stream is not a stream: no signal can be read until it is removed");
            Ok(())
        }
        Err(source) => Err(EngineError::Group {
            stream: stream.clone(),
            group: group.clone(),
            source,
        }),
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let streams = [settings.signals_stream.clone()];
    let (group, consumer) = (&settings.trigger_group, &settings.node_id);
    let mut conn = ReadConnection::new("signals");
    let outage = Outage::new("keeping signals").metered(metrics::redis_meter("signals"));
    // Whether the last read took everything: the next one then waits.
    let mut drained = false;
    let mut claimed_at: Option<Instant> = None;
    let claim_idle = settings.lease_ttl * CLAIM_IDLE_LEASES;
    let claim_every = settings.lease_ttl.min(CLAIM_EVERY);
    while !shared.shutdown.is_cancelled() {
        let Some(c) = conn.get(&shared).await else {
            return;
        };
        let claiming = claimed_at.is_none_or(|at| at.elapsed() >= claim_every);
        let read = if claiming {
            read::claim_idle(
                c,
                &streams[0],
                group,
                consumer,
                claim_idle,
                SIGNALS_BATCH,
                MAX_SIGNAL_ENTRY_BYTES,
            )
            .await
            .inspect(|entries| {
                // A full batch: more may be waiting; look again at once.
                if entries.len() < SIGNALS_BATCH {
                    claimed_at = Some(Instant::now());
                }
                if !entries.is_empty() {
                    tracing::info!(
                        count = entries.len(),
                        "took over signals left unacknowledged"
                    );
                }
            })
        } else {
            let block = settings.block;
            let max = MAX_SIGNAL_ENTRY_BYTES;
            read::group(
                c,
                &streams,
                group,
                consumer,
                SIGNALS_BATCH,
                block,
                max,
                drained,
            )
            .await
            .map(|read| {
                drained = read.drained;
                read.entries
            })
        };
        match read {
            Ok(entries) => {
                conn.succeeded();
                for entry in entries {
                    forward(&shared, &outage, entry).await;
                }
            }
            Err(e) if super::is_nogroup(&e) => {
                tracing::warn!("the daemons' group on the signals stream is gone (Redis lost its data?); creating it again");
                let mut conn = shared.conn.clone();
                if let Err(e) = create_group(&mut conn, settings).await {
                    tracing::warn!(error = %e, "cannot create the signals group yet");
                    super::pause(&shared.shutdown, settings.block).await;
                }
            }
            // A key of another kind in the stream's place (permanent), or
            // Redis failing: told once while it lasts, tried again later.
            Err(e) => {
                if !conn.failed(&shared, &e).await {
                    return;
                }
            }
        }
    }
}

/// What became of one signal.
enum Outcome {
    Kept,
    Duplicate,
    Rejected(String),
}

/// Keeps the signal of `entry` for its saga, or rejects it; writes its
/// event and acknowledges it. Left pending when the daemon stops first.
async fn forward(shared: &Shared, outage: &Outage, entry: Entry) {
    let text = |field: &str| -> Option<String> {
        let value = crate::protocol::text_field(&entry.fields, field).ok()??;
        Some(value.chars().take(NOTED_CHARS).collect())
    };
    let mut note = SignalNote {
        signal: text(SIGNAL).unwrap_or_default(),
        signal_id: text(SIGNAL_ID)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| entry.id.clone()),
        entry_id: entry.id.clone(),
        by: text(BY).filter(|by| !by.is_empty()),
        duplicate: false,
        refused: None,
    };
    let request = if let Some(why) = &entry.malformed {
        Err((None, why.clone()))
    } else if let Some(size) = read::oversized(&entry) {
        let saga_id = text(f::SAGA_ID).and_then(|id| SagaId::parse(&id));
        Err((
            saga_id,
            too_large("the signal", size, MAX_SIGNAL_ENTRY_BYTES),
        ))
    } else {
        SignalRequest::from_fields(&entry.fields, &entry.id)
    };
    let at = EntryRef::new(&entry.stream, &entry.id);
    drop(entry);
    let (saga_id, outcome) = match request {
        Err((saga_id, why)) => (saga_id, Outcome::Rejected(why)),
        Ok(request) => {
            let signal = KeptSignal {
                name: request.name,
                signal_id: request.signal_id,
                payload: request.payload,
                by: request.by,
                // When it reached the signals stream, on Redis's clock.
                received_ms: StreamId::parse(&at.id).map_or(0, StreamId::ms),
            };
            note.signal.clone_from(&signal.name);
            note.signal_id.clone_from(&signal.signal_id);
            note.by.clone_from(&signal.by);
            let Some(outcome) = keep(shared, outage, &request.saga_id, &signal).await else {
                return;
            };
            (Some(request.saga_id), outcome)
        }
    };
    let saga = match &saga_id {
        Some(id) => match saga_of(shared, outage, id).await {
            Some(saga) => saga,
            None => return,
        },
        None => None,
    };
    let event_type = match &outcome {
        Outcome::Kept => EventType::SignalReceived,
        Outcome::Duplicate => {
            note.duplicate = true;
            EventType::SignalReceived
        }
        Outcome::Rejected(why) => {
            note.refused = Some(why.clone());
            EventType::SignalRejected
        }
    };
    let saga_label = saga.as_ref().map_or("", |s| s.saga.as_str());
    match &outcome {
        Outcome::Kept | Outcome::Duplicate => tracing::info!(
            saga_id = %saga_id.as_ref().map(SagaId::as_str).unwrap_or_default(),
            saga = saga_label,
            signal = %note.signal,
            signal_id = %note.signal_id,
            duplicate = note.duplicate,
            "signal received"
        ),
        Outcome::Rejected(why) => tracing::warn!(
            entry_id = %at.id,
            saga_id = %saga_id.as_ref().map(SagaId::as_str).unwrap_or_default(),
            signal = %note.signal,
            reason = %why,
            "signal rejected"
        ),
    }
    let event = SagaEvent {
        correlation_id: saga
            .as_ref()
            .map_or_else(CorrelationId::generate, |s| s.correlation_id.clone()),
        saga_id,
        saga: saga_label.to_owned(),
        event_type,
        status: saga.as_ref().map_or(SagaStatus::Rejected, |s| s.status),
        step: None,
        branch: None,
        payload: serde_json::to_value(&note).expect("a note serializes"),
        timestamp: shared.now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ack: Some(&at),
        ..Default::default()
    };
    match driver::write_until_done(shared, &transition, None).await {
        Ok(_) => metrics::signal(match outcome {
            Outcome::Kept => "kept",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "rejected",
        }),
        Err(WriteOutcome::Refused(e)) => {
            let reason = format!("the signal's event cannot be written: {e}");
            dead_letter(shared, outage, &at, &reason).await;
        }
        Err(WriteOutcome::Stopped) => {}
    }
}

/// Keeps `signal` for saga `saga_id`; `None` if the daemon stopped first.
async fn keep(
    shared: &Shared,
    outage: &Outage,
    saga_id: &SagaId,
    signal: &KeptSignal,
) -> Option<Outcome> {
    let keys = Keys::of(&shared.settings);
    let accept = || {
        let (mut conn, keys) = (shared.conn.clone(), &keys);
        async move {
            match signals::accept(&mut conn, keys, saga_id.as_str(), signal).await {
                Err(SignalError::Redis(e)) => Err(e),
                other => Ok(other),
            }
        }
    };
    Some(
        match retry(&shared.shutdown, Policy::WRITES, outage, accept).await {
            Tried::Done(Ok(Accepted::Kept)) => Outcome::Kept,
            Tried::Done(Ok(Accepted::Duplicate)) => Outcome::Duplicate,
            Tried::Done(Ok(Accepted::Refused(why))) => Outcome::Rejected(why),
            Tried::Done(Err(e)) => Outcome::Rejected(e.to_string()),
            Tried::Refused(e) => Outcome::Rejected(format!("the signal cannot be kept: {e}")),
            Tried::Stopped => return None,
        },
    )
}

/// The saga a signal is for, as its event names it (`Some(None)`: no
/// record that reads); `None` if the daemon stopped first.
async fn saga_of(
    shared: &Shared,
    outage: &Outage,
    saga_id: &SagaId,
) -> Option<Option<SagaOfSignal>> {
    let keys = Keys::of(&shared.settings);
    let read = || {
        let (mut conn, keys) = (shared.conn.clone(), &keys);
        async move { signals::saga_of(&mut conn, keys, saga_id.as_str()).await }
    };
    match retry(&shared.shutdown, Policy::WRITES, outage, read).await {
        Tried::Done(saga) => Some(saga),
        Tried::Refused(e) => {
            tracing::warn!(%saga_id, error = %e, "cannot read the saga a signal is for");
            Some(None)
        }
        Tried::Stopped => None,
    }
}

/// A signal whose event can never be written: moved to the dead-letter
/// stream (a bounded copy, acknowledged), so that it is not taken over
/// again and again. Left pending if even that cannot be done.
async fn dead_letter(shared: &Shared, outage: &Outage, at: &EntryRef, reason: &str) {
    tracing::error!(entry_id = %at.id, stream = %at.stream, %reason, "signal moved to the dead-letter stream");
    let group = Some(shared.settings.trigger_group.as_str());
    let move_it = || {
        let mut conn = shared.conn.clone();
        async move {
            let settings = &shared.settings;
            maintain::dead_letter(&mut conn, settings, &at.stream, group, &at.id, reason).await
        }
    };
    match retry(&shared.shutdown, Policy::WRITES, outage, move_it).await {
        Tried::Done(_) => {
            metrics::dead_lettered("signal");
            metrics::signal("rejected");
        }
        Tried::Refused(e) => {
            tracing::error!(error = %e, entry_id = %at.id, "the signal cannot be dead-lettered either; left pending");
        }
        Tried::Stopped => {}
    }
}
