//! What operators do with sagas from outside the daemon: start one, read a
//! saga's record and events, list sagas. Used by the `start`, `status`,
//! `list` and `watch` subcommands.

use crate::config::Settings;
use crate::protocol::{fields as f, SagaId};
use crate::saga::SagaState;
use crate::streams::{self, Entry};
use redis::aio::MultiplexedConnection;

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
pub async fn start(
    conn: &mut MultiplexedConnection,
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
pub async fn read(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    saga_id: &str,
) -> Result<Option<Record>, String> {
    let key = settings.saga_key(saga_id);
    let ((state, owner), ttl): ((Option<String>, Option<String>), i64) = redis::pipe()
        .cmd("HMGET")
        .arg(&key)
        .arg("state")
        .arg("owner")
        .cmd("TTL")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| format!("cannot read saga {saga_id}: {e}"))?;
    let Some(state) = state else { return Ok(None) };
    let state = serde_json::from_str(&state)
        .map_err(|e| format!("the record of saga {saga_id} cannot be read: {e}"))?;
    Ok(Some(Record {
        state,
        owner,
        expires_in: (ttl >= 0).then_some(ttl),
    }))
}

/// The record of `saga_id` (dashes allowed), or a message saying there is
/// none.
pub async fn read_existing(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    saga_id: &str,
) -> Result<Record, String> {
    let id = saga_id.trim().replace('-', "");
    read(conn, settings, &id).await?.ok_or_else(|| {
        format!("no saga `{id}`: never started, or its record expired after the retention")
    })
}

/// Every saga record, in no order. Scans the keyspace: meant for operators,
/// not for a hot path.
pub async fn list(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
) -> Result<Vec<Record>, String> {
    let pattern = format!("{}{{*}}", settings.saga_key_prefix);
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("hash")
            .query_async(conn)
            .await
            .map_err(|e| format!("cannot list sagas: {e}"))?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut records = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("HMGET").arg(key).arg("state").arg("owner");
        }
        let rows: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(conn)
            .await
            .map_err(|e| format!("cannot list sagas: {e}"))?;
        for (state, owner) in rows {
            // A record that expired meanwhile, or that cannot be read.
            if let Some(state) = state.and_then(|s| serde_json::from_str(&s).ok()) {
                records.push(Record {
                    state,
                    owner,
                    expires_in: None,
                });
            }
        }
    }
    Ok(records)
}

/// The events of `saga_id` still on the events stream, oldest first.
pub async fn events(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
    saga_id: &str,
) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut from = "-".to_owned();
    loop {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(&settings.events_stream)
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await
            .map_err(|e| format!("cannot read {}: {e}", settings.events_stream))?;
        let batch = streams::decode_range_reply(&settings.events_stream, &reply);
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
pub async fn redis_now_ms(conn: &mut MultiplexedConnection) -> Result<u64, String> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|e| format!("cannot read Redis's clock: {e}"))?;
    Ok(secs * 1000 + micros / 1000)
}

/// The owners whose lease is alive now on Redis's clock.
pub async fn live_owners(
    conn: &mut MultiplexedConnection,
    settings: &Settings,
) -> Result<std::collections::HashSet<String>, String> {
    let now_ms = redis_now_ms(conn).await?;
    let owners: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(settings.leases_key())
        .arg(format!("({now_ms}"))
        .arg("+inf")
        .query_async(conn)
        .await
        .map_err(|e| format!("cannot read the leases: {e}"))?;
    Ok(owners.into_iter().collect())
}
