//! One request/reply exchange: the way a single command entry is taken
//! through the contract, from checks to acknowledgement.
//!
//! Order of the checks: an entry that is no command at all (not fields, a
//! field missing or invalid) is dead-lettered; a command whose `event_type`
//! has no route is acknowledged and ignored (other services may share the
//! stream under groups of their own, and each group sees every entry); a
//! command whose `reply_stream` is no reply stream of the daemon's (see
//! `reply_stream.rs`) is dead-lettered without a write to it; a command past
//! its `deadline_ms` on Redis's clock is acknowledged without a reply (the
//! daemon has already counted it as timed out). Everything else gets
//! `start`; a `request_id` with a recorded final reply then gets that reply
//! again without running the handler, and any other runs and gets
//! `completed` or `failed`, recorded, then acknowledged.
//!
//! A write Redis refuses for good (a key of another type) is not tried
//! again: the command is dead-lettered, so that it never holds a slot of
//! `max_in_flight` for good. Transient errors are retried with backoff.
//!
//! The record covers redelivery after a final reply. Two deliveries of one
//! `request_id` handled at the same moment both run, which the contract
//! asks handlers to tolerate (they must be idempotent).

use super::batch::Batch;
use super::dead_letter::{self, dead_letter_key, DEAD_LETTER_MAXLEN, MAX_REASON_BYTES};
use super::outbox::{xadd, Outbox};
use super::runner::{Routes, Shared};
use super::stats::GaveUp;
use super::{Context, Handle, HandlerError};
use crate::connection::Conn;
use crate::protocol::reply::reply_fields;
use crate::protocol::{fields as f, text_field, Command, RawFields, ReplyStatus, TraceParent};
use crate::retry::{retry, Policy, Tried};
use crate::streams::Entry;
use crate::telemetry;
use redis::{RedisError, RedisResult};
use serde_json::Map;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// The Redis key that records the final reply to `request_id` for `group`.
/// The hash tag keeps a group's records together in a cluster.
pub fn done_key(group: &str, request_id: &str) -> String {
    format!("handler:{{{group}}}:done:{request_id}")
}

/// Takes one entry through the exchange; the permit bounds how many run.
pub(super) async fn handle_entry(
    shared: Arc<Shared>,
    stream: Arc<str>,
    routes: Arc<Routes>,
    entry: Entry,
    _permit: OwnedSemaphorePermit,
) {
    let Entry {
        id,
        fields,
        malformed,
        ..
    } = entry;
    let mut conn = shared.writer.clone();
    if let Some(reason) = malformed {
        let why = format!("malformed entry: {reason}");
        return give_up(&shared, &stream, &id, &fields, GaveUp::Malformed, &why).await;
    }
    if let Ok(Some(event_type)) = text_field(&fields, f::EVENT_TYPE) {
        if !routes.contains_key(event_type) {
            tracing::debug!(%stream, entry_id = %id, event_type, "not ours; acknowledged");
            return ack(&mut conn, &shared, &stream, &id).await;
        }
    }
    let command = match Command::from_fields(&fields) {
        Ok(command) => command,
        Err(reason) => {
            let why = format!("malformed command: {reason}");
            return give_up(&shared, &stream, &id, &fields, GaveUp::Malformed, &why).await;
        }
    };
    let Some(handler) = routes.get(&command.event_type).cloned() else {
        return ack(&mut conn, &shared, &stream, &id).await;
    };
    let request_id = command.request_id.as_str();
    if let Err(refusal) = shared
        .reply_streams
        .check(&command.reply_stream, request_id)
    {
        let why = format!("{refusal}: {:?}", command.reply_stream);
        return give_up(&shared, &stream, &id, &fields, GaveUp::Refused, &why).await;
    }
    drop(fields);
    if command.deadline_ms < shared.clock.now_ms() {
        tracing::info!(%stream, entry_id = %id, request_id = %command.request_id, "deadline passed; skipped");
        return ack(&mut conn, &shared, &stream, &id).await;
    }
    let span = command.child_traceparent();
    let traced = telemetry::handler::command_span(&command, &stream, &shared.group, &span);
    answer(shared, stream, handler, command, span, id)
        .instrument(traced)
        .await;
}

/// Everything after the checks: `start`, the handler or the recorded
/// reply, then the final reply, the record and the acknowledgement.
async fn answer(
    shared: Arc<Shared>,
    stream: Arc<str>,
    handler: Arc<dyn Handle>,
    command: Command,
    span: TraceParent,
    id: String,
) {
    let conn = shared.writer.clone();
    let key = done_key(&shared.group, command.request_id.as_str());
    // The record is read and `start` sent in one round trip (two on a
    // cluster, where they are in different slots). A command answered
    // before thus gets `start` again ahead of its replayed final reply, as
    // any redelivered command does.
    let start = reply_fields(&command, &span, &ReplyStatus::Start, shared.clock.now_ms());
    let read = retry(&shared.shutdown, Policy::HANDLER, &shared.writes, || {
        let mut conn = conn.clone();
        let mut batch = Batch::pipelined();
        batch.add(&key, redis::cmd("GET").arg(&key).clone());
        batch.add(&command.reply_stream, xadd(&command.reply_stream, &start));
        async move {
            let replies = batch.send(&mut conn).await?;
            let record = replies.into_iter().next().unwrap_or(redis::Value::Nil);
            redis::from_redis_value::<Option<String>>(record).map_err(RedisError::from)
        }
    })
    .await;
    let recorded = match read {
        Tried::Done(recorded) => recorded,
        Tried::Refused(e) => {
            let what = "write `start` or read the recorded reply";
            return unwritable(&shared, &stream, &id, &command, what, e).await;
        }
        Tried::Stopped => return,
    };
    let recorded =
        recorded.and_then(|json| serde_json::from_str::<BTreeMap<String, String>>(&json).ok());
    let outbox = Outbox::new(
        &command.reply_stream,
        command.request_id.as_str(),
        conn.clone(),
    );
    let final_fields: Vec<(String, String)> = match recorded {
        Some(fields) => {
            tracing::info!(request_id = %command.request_id, "already answered; replaying the final reply");
            fields.into_iter().collect()
        }
        None => match run_handler(&shared, &handler, &command, span, &outbox).await {
            Some(fields) => fields,
            None => return, // left unanswered: pending, unrecorded
        },
    };
    // The record, the progress still queued, the final reply and the
    // acknowledgement, in this order. On one Redis they are one MULTI: a
    // crash leaves either all of them (the command is done) or none (it is
    // redelivered, and the record, if any, replayed). On a cluster they
    // are in different slots and go one slot after the other: a crash
    // after the record leaves the command pending, and its redelivery
    // replays the record; one after the replies leaves an answered
    // command pending, which gets the same final reply again, a late
    // duplicate the daemon ignores. Acknowledging first could lose the
    // reply for good.
    let (_writing, progress) = outbox.take_for_final().await;
    let mut writes = Batch::all_or_in_order();
    let mut record = redis::cmd("SET");
    record
        .arg(&key)
        .arg(record_json(&final_fields))
        .arg("EX")
        .arg(shared.record_ttl_secs);
    writes.add(&key, record);
    for fields in &progress {
        writes.add(&command.reply_stream, xadd(&command.reply_stream, fields));
    }
    writes.add(
        &command.reply_stream,
        xadd(&command.reply_stream, &final_fields),
    );
    writes.add(&stream, xack(&stream, &shared.group, &id));
    let finish = || {
        let (mut conn, writes) = (conn.clone(), &writes);
        async move { writes.send(&mut conn).await.map(drop) }
    };
    if let Tried::Refused(e) =
        retry(&shared.shutdown, Policy::HANDLER, &shared.writes, finish).await
    {
        // Redis ran what it could: the record, and on one Redis the
        // acknowledgement, may be in place; the reply is not.
        unwritable(&shared, &stream, &id, &command, "write the final reply", e).await;
    }
}

/// Waits for the handler's task, sending `heartbeat` replies meanwhile when
/// the command has a `heartbeat_timeout_ms`: one every third of it (at
/// most one per [`MIN_HEARTBEAT_EVERY`]), left out when a `progress` reply
/// went within that time. The last one is never written after the final
/// reply: both go through the outbox, in order.
async fn heartbeating(
    shared: &Shared,
    command: &Command,
    span: &TraceParent,
    outbox: &Outbox,
    mut task: tokio::task::JoinHandle<super::HandlerResult>,
) -> Result<super::HandlerResult, tokio::task::JoinError> {
    let Some(timeout_ms) = command.heartbeat_timeout_ms else {
        return task.await;
    };
    let every = Duration::from_millis(timeout_ms / 3).max(MIN_HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            outcome = &mut task => return outcome,
            () = tokio::time::sleep(every) => {
                if outbox.quiet_for(every) {
                    outbox.push(reply_fields(command, span, &ReplyStatus::Heartbeat, shared.clock.now_ms()));
                }
            }
        }
    }
}

/// The shortest time between two heartbeats of one command, whatever its
/// `heartbeat_timeout_ms` says: a forged command asking for a heartbeat
/// every millisecond costs ten writes a second at most.
pub const MIN_HEARTBEAT_EVERY: Duration = Duration::from_millis(100);

/// The handler, then the final reply's fields; `None` when the handler
/// leaves the command unanswered.
async fn run_handler(
    shared: &Shared,
    handler: &Arc<dyn Handle>,
    command: &Command,
    span: TraceParent,
    outbox: &Outbox,
) -> Option<Vec<(String, String)>> {
    let shared_command = Arc::new(command.clone());
    let ctx = Context::new(
        shared_command,
        span.clone(),
        outbox.clone(),
        shared.shutdown.clone(),
        shared.clock.clone(),
    );
    // In a task of its own so that a panicking handler fails its command
    // instead of leaving it pending.
    let task = tokio::spawn(
        handler
            .handle(command.clone(), ctx)
            .instrument(tracing::Span::current()),
    );
    let outcome = heartbeating(shared, command, &span, outbox, task).await;
    let status = match outcome {
        Ok(Ok(result)) => ReplyStatus::Completed { result },
        Ok(Err(HandlerError::Retryable(error))) => ReplyStatus::Failed {
            error,
            retryable: true,
        },
        Ok(Err(HandlerError::Fatal(error))) => ReplyStatus::Failed {
            error,
            retryable: false,
        },
        Ok(Err(HandlerError::Unanswered(why))) => {
            tracing::info!(request_id = %command.request_id, %why, "left unanswered");
            return None;
        }
        Err(e) => ReplyStatus::Failed {
            error: format!("handler crashed: {e}"),
            retryable: false,
        },
    };
    if let ReplyStatus::Failed { error, .. } = &status {
        telemetry::handler::failed(error);
    }
    let fields = reply_fields(command, &span, &status, shared.clock.now_ms());
    Some(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn xack(stream: &str, group: &str, id: &str) -> redis::Cmd {
    let mut xack = redis::cmd("XACK");
    xack.arg(stream).arg(group).arg(id);
    xack
}

async fn ack(conn: &mut Conn, shared: &Shared, stream: &str, id: &str) {
    let acked: RedisResult<i64> = xack(stream, &shared.group, id).query_async(conn).await;
    if let Err(e) = acked {
        // Left pending: taken over and handled again at a later start.
        tracing::warn!(%stream, entry_id = %id, error = %e, "could not acknowledge");
    }
}

/// Gives up on a command Redis will not let us answer.
async fn unwritable(
    shared: &Shared,
    stream: &str,
    id: &str,
    command: &Command,
    what: &str,
    error: RedisError,
) {
    let fields: RawFields = command
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    let why = format!("Redis refuses for good to {what}: {error}");
    give_up(shared, stream, id, &fields, GaveUp::Unwritable, &why).await;
}

/// Gives up on a command that can never be answered: logs and counts it,
/// then copies it to the group's dead-letter stream and acknowledges it,
/// in one MULTI on one Redis, the copy first on a cluster (a crash in
/// between redelivers the command, which is given up on again: a second
/// copy, never none). Should Redis refuse the copy for good as well, the
/// command is acknowledged without one, so that it is never read again.
async fn give_up(
    shared: &Shared,
    stream: &str,
    id: &str,
    fields: &RawFields,
    kind: GaveUp,
    why: &str,
) {
    shared.stats.gave_up(kind);
    let (reason, _) = dead_letter::cut(why, MAX_REASON_BYTES);
    tracing::warn!(%stream, entry_id = %id, reason = %reason.escape_debug(), "command not answered; dead-lettered");
    let copy = dead_letter::entry(stream, id, &shared.consumer, fields, reason);
    let key = dead_letter_key(&shared.group);
    let mut writes = Batch::all_or_in_order();
    let mut copy_cmd = redis::cmd("XADD");
    copy_cmd
        .arg(&key)
        .arg("MAXLEN")
        .arg("~")
        .arg(DEAD_LETTER_MAXLEN)
        .arg("*")
        .arg(&copy);
    writes.add(&key, copy_cmd);
    writes.add(stream, xack(stream, &shared.group, id));
    let write = || {
        let (mut conn, writes) = (shared.writer.clone(), &writes);
        async move { writes.send(&mut conn).await.map(drop) }
    };
    match retry(&shared.shutdown, Policy::HANDLER, &shared.writes, write).await {
        Tried::Done(()) => shared.stats.dead_lettered(true),
        Tried::Refused(error) => {
            shared.stats.dead_lettered(false);
            tracing::error!(%stream, entry_id = %id, dead_letter = %key, %error, "cannot dead-letter a command; acknowledged without a copy");
            ack(&mut shared.writer.clone(), shared, stream, id).await;
        }
        // Left pending: taken over and given up on again at a later start.
        Tried::Stopped => {}
    }
}

/// Final reply fields as the JSON object recorded under [`done_key`].
fn record_json(fields: &[(String, String)]) -> String {
    let map: Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}
