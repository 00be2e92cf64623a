//! What operators do with sagas from outside the daemon: start one, read a
//! saga's record and events, list sagas, see who holds which lock
//! ([`locks`]). Used by the `start`, `status`, `list`, `locks` and `watch`
//! subcommands.
//!
//! Each works on one Redis and on a cluster alike: every command names
//! one key, and every pipeline keys of one hash slot (a partition's, or
//! the leases'), which is all a cluster lets one pipeline hold.

pub mod locks;

use crate::config::Settings;
use crate::definition::SagaDefinition;
use crate::protocol::{fields as f, CorrelationId, SagaId};
use crate::saga::SagaState;
use crate::store::keys::Keys;
use crate::store::sagas;
use crate::streams::{self, Entry};
use redis::aio::ConnectionLike;
use std::collections::HashSet;

mod names;
pub use names::{answer_to_name, paused_names, request_name, NameAction, PausedName};

/// A start entry to write.
#[derive(Clone, Debug, Default)]
pub struct Start {
    pub saga: Option<String>,
    /// The input, as JSON text.
    pub payload: String,
    pub correlation_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
}

/// Where a start was written, and the id its saga gets.
#[derive(Clone, Debug)]
pub struct Started {
    pub entry_id: String,
    pub saga_id: SagaId,
}

/// Writes a start on `trigger`.
pub async fn start<C: ConnectionLike + Send>(
    conn: &mut C,
    trigger: &str,
    start: &Start,
) -> redis::RedisResult<Started> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(trigger)
        .arg("*")
        .arg(f::PAYLOAD)
        .arg(&start.payload);
    let optional = [
        (f::SAGA, &start.saga),
        (f::CORRELATION_ID, &start.correlation_id),
        (f::IDEMPOTENCY_KEY, &start.idempotency_key),
        (f::TRACEPARENT, &start.traceparent),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            cmd.arg(name).arg(value);
        }
    }
    let entry_id: String = cmd.query_async(conn).await?;
    Ok(Started {
        saga_id: SagaId::for_start(trigger, &entry_id),
        entry_id,
    })
}

/// A saga's record as the daemon keeps it.
#[derive(Clone, Debug)]
pub struct Record {
    pub state: SagaState,
    /// The daemon owning it (its lease token).
    pub owner: Option<String>,
    /// Seconds left before the record expires; `None` while it runs.
    pub expires_in: Option<i64>,
}

/// The record of `saga_id`; `Ok(None)` when there is none (never started,
/// or expired after its retention).
pub async fn read<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
) -> Result<Option<Record>, String> {
    let record = sagas::load_state(conn, &Keys::of(settings), saga_id)
        .await
        .map_err(|e| match e {
            sagas::LoadError::Redis(e) => format!("cannot read saga {saga_id}: {e}"),
            unreadable => unreadable.to_string(),
        })?;
    Ok(record.map(Record::from))
}

impl From<sagas::Record> for Record {
    fn from(r: sagas::Record) -> Self {
        Self {
            state: r.state,
            owner: r.owner,
            expires_in: r.expires_in,
        }
    }
}

/// The sagas listed at most: `list` looks at the sagas most recently
/// changed in the phases asked for, this many of them, never at every
/// saga kept.
pub const MAX_LISTED: usize = 10_000;

/// The sagas in `phases` (every phase when empty) that entered them last,
/// at most `max` (and at most [`MAX_LISTED`]), from the partitions'
/// indexes of sagas by phase.
pub async fn list<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    phases: &[&str],
    max: usize,
) -> Result<Vec<Record>, String> {
    let keys = Keys::of(settings);
    let ids = sagas::ids(conn, &keys, phases, max.min(MAX_LISTED))
        .await
        .map_err(|e| format!("cannot list sagas: {e}"))?;
    let records = sagas::records(conn, &keys, &ids)
        .await
        .map_err(|e| format!("cannot list sagas: {e}"))?;
    Ok(records.into_iter().flatten().map(Record::from).collect())
}

/// At most this many sagas are read for one name given on the command
/// line: enough to show why it is ambiguous.
pub const MAX_MATCHES: usize = 20;

/// How an operator names a saga on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaRef {
    /// Its id, or the start of it (what `watch` and `start --wait` show):
    /// lowercase hex, dashes dropped.
    Id(String),
    /// Its correlation id, exactly.
    Correlation(CorrelationId),
}

impl SagaRef {
    /// An id or the start of one: hex digits (dashes and case ignored), at
    /// most a whole id's 32.
    pub fn id(text: &str) -> Result<SagaRef, String> {
        let id: String = text
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if id.is_empty() {
            return Err("a saga id (or the start of one) is needed".into());
        }
        if let Some(bad) = id.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "`{text}` is not a saga id: `{bad}` is not a hex digit"
            ));
        }
        if id.len() > 32 {
            return Err(format!(
                "`{text}` is not a saga id: {} hex digits, an id has 32",
                id.len()
            ));
        }
        Ok(SagaRef::Id(id))
    }
}

impl std::fmt::Display for SagaRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SagaRef::Id(id) if id.len() == 32 => write!(f, "saga `{id}`"),
            SagaRef::Id(id) => write!(f, "saga id starting `{id}`"),
            SagaRef::Correlation(c) => write!(f, "correlation id `{c}`"),
        }
    }
}

/// The sagas a [`SagaRef`] names: at most [`MAX_MATCHES`] records, and how
/// many there are.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub records: Vec<Record>,
    pub total: usize,
}

/// The sagas `which` names. A whole id is one read; the start of one
/// scans the record keys that begin with it; a correlation id reads every
/// record, as [`list`] does (no index of correlation ids is kept).
pub async fn find<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    which: &SagaRef,
) -> Result<Found, String> {
    match which {
        SagaRef::Id(id) if id.len() == 32 => {
            let records: Vec<Record> = read(conn, settings, id).await?.into_iter().collect();
            Ok(Found {
                total: records.len(),
                records,
            })
        }
        SagaRef::Id(prefix) => {
            let wanted = |id: &str| id.starts_with(prefix.as_str());
            let mut found = scan(conn, settings, wanted, |_| true, MAX_MATCHES).await?;
            if let [only] = found.records.as_slice() {
                // With its expiry, which a scan does not read.
                let id = only.state.saga_id.to_string();
                found.records = read(conn, settings, &id).await?.into_iter().collect();
            }
            Ok(found)
        }
        SagaRef::Correlation(want) => {
            let mut found = scan(
                conn,
                settings,
                |_| true,
                |r| r.state.correlation_id == *want,
                MAX_MATCHES,
            )
            .await?;
            found
                .records
                .sort_by_key(|r| std::cmp::Reverse(r.state.started_at_ms));
            if let [only] = found.records.as_slice() {
                let id = only.state.saga_id.to_string();
                found.records = read(conn, settings, &id).await?.into_iter().collect();
            }
            Ok(found)
        }
    }
}

/// Sagas that entered their phase last first, found through the partitions'
/// indexes (every saga not yet expired is in one): those whose id `by_id`
/// keeps and whose record `keep` keeps, at most `max` of them, and how many
/// there are. Records are read by [`sagas::records`], a partition at a
/// time, [`sagas::RECORDS_PER_PIPELINE`] at once.
async fn scan<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    by_id: impl Fn(&str) -> bool,
    mut keep: impl FnMut(&Record) -> bool,
    max: usize,
) -> Result<Found, String> {
    let keys = Keys::of(settings);
    let ids: Vec<String> = sagas::ids(conn, &keys, &[], usize::MAX)
        .await
        .map_err(|e| format!("cannot list sagas: {e}"))?
        .into_iter()
        .filter(|id| by_id(id))
        .collect();
    let mut found = Found::default();
    for chunk in ids.chunks(sagas::RECORDS_PER_PIPELINE) {
        let records = sagas::records(conn, &keys, chunk)
            .await
            .map_err(|e| format!("cannot list sagas: {e}"))?;
        for record in records.into_iter().flatten().map(Record::from) {
            if !keep(&record) {
                continue;
            }
            found.total += 1;
            if found.records.len() < max {
                found.records.push(record);
            }
        }
    }
    Ok(found)
}

/// The definition `saga` ran on, as the daemons keep each version they
/// ran; `None` when it is no longer kept or cannot be read (the display
/// then shows step numbers).
pub async fn definition<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga: &SagaState,
) -> Option<SagaDefinition> {
    let key = Keys::of(settings).definition(&saga.saga, &saga.definition_version);
    let text: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await.ok()?;
    crate::definition::load_str(std::path::Path::new(&key), &text?).ok()
}

/// The events of `saga_id` still on the events stream, oldest first.
pub async fn events<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
) -> Result<Vec<Entry>, String> {
    events_from(conn, settings, saga_id, "-").await
}

/// The events of `saga_id` on the events stream from `from` on (an
/// `XRANGE` start: `-`, an id, or `(<id>` for after it), oldest first,
/// read 5,000 entries at a time.
pub async fn events_from<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
    from: &str,
) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut from = from.to_owned();
    loop {
        let stream = &settings.events_stream;
        let batch = streams::range(conn, stream, &from, "+", 5000)
            .await
            .map_err(|e| format!("cannot read {stream}: {e}"))?;
        let Some(last) = batch.last() else { break };
        from = format!("({}", last.id);
        let full = batch.len() == 5000;
        out.extend(
            batch.into_iter().filter(|e| {
                e.fields.get(f::SAGA_ID).map(Vec::as_slice) == Some(saga_id.as_bytes())
            }),
        );
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Redis's time, in unix ms: what leases and deadlines are measured on,
/// whatever this host's clock says.
pub async fn redis_now_ms<C: ConnectionLike + Send>(conn: &mut C) -> Result<u64, String> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|e| format!("cannot read Redis's clock: {e}"))?;
    Ok(secs * 1000 + micros / 1000)
}

/// Leases read per round trip by [`live_owners`]: a deployment runs a
/// few daemons, and the leases of those gone stay only until their sagas
/// are claimed.
const LEASES_PER_READ: isize = 256;

/// The owners whose lease is alive, and Redis's time they were judged by.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Unix ms on the clock of the Redis that holds the leases, the clock
    /// the daemons' leases run out on.
    pub now_ms: u64,
    pub owners: HashSet<String>,
}

/// The owners whose lease is alive now, on the clock of the Redis that
/// holds the leases (on a cluster, the time is read in one pipeline with
/// the leases, so from their node). Leases are read latest to run out
/// first, until one has run out.
pub async fn live_owners<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
) -> Result<Live, String> {
    let key = Keys::of(settings).leases();
    let mut live = Live::default();
    let mut from = 0;
    loop {
        let ((secs, micros), page): ((u64, u64), Vec<(String, f64)>) = redis::pipe()
            .cmd("TIME")
            .cmd("ZREVRANGE")
            .arg(&key)
            .arg(from)
            .arg(from + LEASES_PER_READ - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .map_err(|e| format!("cannot read the leases: {e}"))?;
        if from == 0 {
            live.now_ms = secs * 1000 + micros / 1000;
        }
        let full = page.len() == LEASES_PER_READ as usize;
        let mut ran_out = false;
        for (owner, expires_at_ms) in page {
            if expires_at_ms > live.now_ms as f64 {
                live.owners.insert(owner);
            } else {
                ran_out = true;
            }
        }
        if ran_out || !full {
            return Ok(live);
        }
        from += LEASES_PER_READ;
    }
}

/// What the daemons made of a start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Its saga was started.
    Started,
    /// A saga was started before with the same idempotency key: its id.
    Duplicate(String),
    /// Refused, and why.
    Rejected(String),
}

/// Whether `entry` of the events stream says what became of the start
/// `entry_id` written on `stream`, which would start `saga_id`.
pub fn taken_by(entry: &Entry, stream: &str, entry_id: &str, saga_id: &str) -> Option<Taken> {
    let text = |name: &str| entry.fields.get(name).map(|v| String::from_utf8_lossy(v));
    let event = text(f::EVENT_TYPE).unwrap_or_default();
    if event == "saga_started" && text(f::SAGA_ID).as_deref() == Some(saga_id) {
        return Some(Taken::Started);
    }
    if event != "saga_duplicate" && event != "saga_rejected" {
        return None;
    }
    let payload: serde_json::Value =
        serde_json::from_str(&text(f::PAYLOAD).unwrap_or_default()).unwrap_or_default();
    let ours =
        payload["entry_id"] == entry_id && payload["stream"].as_str().is_none_or(|s| s == stream);
    if !ours {
        return None;
    }
    Some(if event == "saga_duplicate" {
        Taken::Duplicate(
            payload["existing_saga_id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        )
    } else {
        Taken::Rejected(payload["reason"].as_str().unwrap_or("?").to_owned())
    })
}

/// An operator's request: `cancel`, `retry`, `skip`, `abandon`, `pause`
/// or `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Retry,
    Skip,
    Abandon,
    Pause,
    Resume,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cancel" => Some(Self::Cancel),
            "retry" => Some(Self::Retry),
            "skip" => Some(Self::Skip),
            "abandon" => Some(Self::Abandon),
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Abandon => "abandon",
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }

    /// Why `state` is in no state for this request, if it is not: only a
    /// running saga can be cancelled; only a saga stuck on a failed
    /// compensation (failed, not abandoned) retried, skipped or abandoned.
    pub fn refused_for(self, state: &SagaState) -> Option<String> {
        let paused = state.paused.as_ref();
        match (self, paused) {
            (Self::Pause, Some(p)) => {
                return Some(format!(
                    "saga {} is paused already, by {}",
                    state.saga_id, p.by
                ))
            }
            (Self::Pause, None) if state.phase.is_terminal() => {
                return Some(format!(
                    "saga {} is {}: only a running or compensating saga can be paused",
                    state.saga_id,
                    state.phase.status().as_str()
                ))
            }
            (Self::Pause, None) => return None,
            (Self::Resume, None) => {
                return Some(format!(
                    "saga {} is {}, not paused",
                    state.saga_id,
                    state.phase.status().as_str()
                ))
            }
            (Self::Resume, Some(_)) => return None,
            _ => {}
        }
        let abandoned = state.abandoned_by().is_some();
        let allowed = match self {
            Self::Cancel => state.phase == crate::saga::Phase::Running,
            _ => matches!(state.phase, crate::saga::Phase::Failed(_)) && !abandoned,
        };
        (!allowed).then(|| {
            format!(
                "saga {} is {}{}: {}",
                state.saga_id,
                state.phase.status().as_str(),
                if abandoned { " and abandoned" } else { "" },
                if self == Self::Cancel {
                    "only a running saga can be cancelled"
                } else {
                    "only a saga stuck on a failed compensation can be retried, skipped or \
                     abandoned"
                }
            )
        })
    }
}

/// Writes an operator's request for `saga_id`, signed with `key` at
/// Redis's time, to the control stream (capped at `control_maxlen`).
pub async fn request<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    key: &crate::protocol::control::OperatorKey,
    saga_id: &SagaId,
    action: Action,
    step: Option<String>,
    reason: &str,
) -> Result<(), String> {
    let issued_ms = redis_now_ms(conn).await?;
    let request = crate::protocol::control::ControlRequest::signed(
        key,
        saga_id.clone(),
        action.as_str(),
        step,
        reason,
        issued_ms,
    );
    write_control(conn, settings, request.to_fields()).await
}

/// Writes a signed request to the control stream, capped at
/// `control_maxlen`.
pub(crate) async fn write_control<C: ConnectionLike + Send, V: redis::ToRedisArgs>(
    conn: &mut C,
    settings: &Settings,
    fields: impl IntoIterator<Item = (&'static str, V)>,
) -> Result<(), String> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&settings.control_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.control_maxlen)
        .arg("*");
    for (name, value) in fields {
        cmd.arg(name).arg(value);
    }
    let _: String = cmd
        .query_async(conn)
        .await
        .map_err(|e| format!("cannot write the request: {e}"))?;
    Ok(())
}

/// The payload of `entry` when it is the daemon's answer to an operator's
/// request about `saga_id` (an `operator_action`, with `refused` when it
/// was refused).
pub fn answer_to(entry: &Entry, saga_id: &str) -> Option<serde_json::Value> {
    let text = |k: &str| entry.fields.get(k).map(|v| String::from_utf8_lossy(v));
    let ours = text(f::SAGA_ID).as_deref() == Some(saga_id)
        && text(f::EVENT_TYPE).as_deref() == Some("operator_action");
    ours.then(|| {
        serde_json::from_str(&text(f::PAYLOAD).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    })
}

/// Writes `signal` to the signals stream (capped at about
/// `signals_maxlen`); returns the entry's id, which the daemons' answer
/// names ([`signal_answer`]).
pub async fn signal<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    signal: &crate::protocol::signal::SignalRequest,
) -> Result<String, String> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(&settings.signals_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.signals_maxlen)
        .arg("*");
    for (name, value) in signal.to_fields() {
        cmd.arg(name).arg(value);
    }
    cmd.query_async(conn)
        .await
        .map_err(|e| format!("cannot write the signal: {e}"))
}

/// What the daemons made of a signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalOutcome {
    /// Kept for the saga: its `wait` step takes it.
    Kept,
    /// The same signal (name and id) was kept before; nothing changed.
    Duplicate,
    /// Refused, and why.
    Rejected(String),
}

/// The outcome `entry` of the events stream tells of the signal written as
/// entry `entry_id` of the signals stream, if it is its answer (a
/// `signal_received` or `signal_rejected` naming that entry).
pub fn signal_answer(entry: &Entry, entry_id: &str) -> Option<SignalOutcome> {
    let text = |k: &str| entry.fields.get(k).map(|v| String::from_utf8_lossy(v));
    let event = text(f::EVENT_TYPE)?;
    if event != "signal_received" && event != "signal_rejected" {
        return None;
    }
    let payload: serde_json::Value =
        serde_json::from_str(&text(f::PAYLOAD).unwrap_or_default()).ok()?;
    if payload["entry_id"] != entry_id {
        return None;
    }
    Some(if event == "signal_rejected" {
        let why = payload["refused"].as_str().unwrap_or("no reason given");
        SignalOutcome::Rejected(why.to_owned())
    } else if payload["duplicate"] == true {
        SignalOutcome::Duplicate
    } else {
        SignalOutcome::Kept
    })
}
