//! Bounded reads for an operator's view of a deployment (`sagaflow
//! doctor`): leases, the sagas held under an owner, a stream's consumer
//! groups and consumers, the sagas that failed lately, whether a pinned
//! definition is kept. Every read takes at most a given number of items,
//! and none walks the keyspace (no `KEYS`, no `SCAN`): what it reads is
//! named by the settings, the definitions, or what it read before.

use super::keys::{Keys, Partition};
use super::scripts::{INSPECT_STREAM, RECENT_FAILURES};
use crate::config::Settings;
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

/// One daemon's lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The owner token, `<node_id>.<epoch>`.
    pub owner: String,
    /// When it runs out, in unix ms on Redis's clock.
    pub expires_at_ms: u64,
}

/// The leases, latest to run out first.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    /// Redis's time when they were read, in unix ms.
    pub now_ms: u64,
    /// How many leases there are in all.
    pub total: u64,
    /// At most the number asked for.
    pub leases: Vec<Lease>,
}

/// Redis's time and the `max` leases that run out last (live ones first).
pub async fn leases<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    max: usize,
) -> RedisResult<Leases> {
    let key = Keys::of(settings).leases();
    let ((secs, micros), total, rows): ((u64, u64), u64, Vec<(String, f64)>) = redis::pipe()
        .cmd("TIME")
        .cmd("ZCARD")
        .arg(&key)
        .cmd("ZREVRANGE")
        .arg(&key)
        .arg(0)
        .arg(max.saturating_sub(1))
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    let leases = if max == 0 { Vec::new() } else { rows };
    Ok(Leases {
        now_ms: secs * 1000 + micros / 1000,
        total,
        leases: leases
            .into_iter()
            .map(|(owner, score)| Lease {
                owner,
                expires_at_ms: score.max(0.0) as u64,
            })
            .collect(),
    })
}

/// How many sagas `owner` holds, and at most `max` of their ids: its set
/// in each partition, one partition at a time.
pub async fn owned<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    owner: &str,
    max: usize,
) -> RedisResult<(u64, Vec<String>)> {
    let keys = Keys::of(settings);
    let (mut total, mut ids) = (0, Vec::new());
    for p in Partition::all() {
        let key = keys.owned(p, owner);
        let (n, some): (u64, Vec<String>) = redis::pipe()
            .cmd("SCARD")
            .arg(&key)
            .cmd("SRANDMEMBER")
            .arg(&key)
            .arg(max.saturating_sub(ids.len()))
            .query_async(conn)
            .await?;
        total += n;
        ids.extend(some);
    }
    ids.truncate(max);
    Ok((total, ids))
}

/// Whether the text of `version` of saga `saga` is kept in Redis, so that
/// any daemon can finish the sagas started on it.
pub async fn definition_kept<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga: &str,
    version: &str,
) -> RedisResult<bool> {
    let n: u64 = redis::cmd("EXISTS")
        .arg(Keys::of(settings).definition(saga, version))
        .query_async(conn)
        .await?;
    Ok(n == 1)
}

/// The ids of at most `max` sagas whose `saga_failed` event is among the
/// last `look_back` entries of the events stream, newest first.
pub async fn recent_failures<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    look_back: usize,
    max: usize,
) -> RedisResult<Vec<String>> {
    RECENT_FAILURES
        .run(
            conn,
            &[&settings.events_stream],
            &[look_back.to_string(), max.to_string()],
        )
        .await
}

/// Bounds of [`stream`].
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub groups: usize,
    pub consumers: usize,
    /// Longest group name, consumer name or reason kept, in bytes.
    pub bytes: usize,
}

/// A stream as [`stream`] describes it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StreamInfo {
    /// Redis's `TYPE` of the key: `stream`, `none` when missing, or
    /// another kind, which no reader can use.
    pub kind: String,
    pub length: u64,
    /// The `reason` field of the last entry (dead-letter streams have one).
    pub last_reason: Option<String>,
    /// How many groups read it in all.
    pub group_count: u64,
    /// The first groups, at most [`StreamLimits::groups`].
    pub groups: Vec<GroupInfo>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GroupInfo {
    pub name: String,
    /// How many consumers it has in all.
    pub consumer_count: u64,
    /// Entries delivered to its consumers and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to it; `None` when Redis cannot tell
    /// (entries were deleted or trimmed in between).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
    /// The first consumers, at most [`StreamLimits::consumers`].
    pub consumers: Vec<ConsumerInfo>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConsumerInfo {
    pub name: String,
    pub pending: u64,
    /// Since its last read or claim, in ms.
    pub idle_ms: u64,
}

/// Describes `stream` within `limits` (see `scripts/inspect_stream.lua`).
pub async fn stream<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    limits: StreamLimits,
) -> RedisResult<StreamInfo> {
    let reply: Vec<Value> = INSPECT_STREAM
        .run(
            conn,
            &[stream],
            &[
                limits.groups.to_string(),
                limits.consumers.to_string(),
                limits.bytes.to_string(),
            ],
        )
        .await?;
    let mut items = reply.into_iter();
    let mut next = || items.next().unwrap_or(Value::Nil);
    let kind: String = redis::from_redis_value(next())?;
    let length: u64 = redis::from_redis_value(next())?;
    let last_reason: String = redis::from_redis_value(next())?;
    let group_count: u64 = redis::from_redis_value(next())?;
    let mut groups = Vec::new();
    loop {
        let Value::Array(group) = next() else { break };
        groups.push(group_info(group)?);
    }
    Ok(StreamInfo {
        kind,
        length,
        last_reason: (!last_reason.is_empty()).then_some(last_reason),
        group_count,
        groups,
    })
}

fn group_info(group: Vec<Value>) -> RedisResult<GroupInfo> {
    let mut items = group.into_iter();
    let mut next = || items.next().unwrap_or(Value::Nil);
    let name: String = redis::from_redis_value(next())?;
    let consumer_count: u64 = redis::from_redis_value(next())?;
    let pending: u64 = redis::from_redis_value(next())?;
    let lag: i64 = redis::from_redis_value(next())?;
    let last_delivered_id: String = redis::from_redis_value(next())?;
    let mut consumers = Vec::new();
    loop {
        let Value::Array(consumer) = next() else {
            break;
        };
        let (name, pending, idle_ms): (String, u64, u64) =
            redis::from_redis_value(Value::Array(consumer))?;
        consumers.push(ConsumerInfo {
            name,
            pending,
            idle_ms,
        });
    }
    Ok(GroupInfo {
        name,
        consumer_count,
        pending,
        lag: u64::try_from(lag).ok(),
        last_delivered_id,
        consumers,
    })
}
