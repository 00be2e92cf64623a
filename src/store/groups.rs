//! Consumer groups of the shared streams (the daemons' group on each
//! trigger stream, the handlers' groups on the command streams): their
//! creation, their pending entries, and the consumers daemons long gone
//! left in them. Reading entries through a group is [`super::read`]'s.

use crate::streams::{is_busygroup, is_nogroup, text, StreamId};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use std::collections::HashMap;
use std::time::Duration;

/// What creating a group did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The group was there already (made by another daemon): left as it is.
    Existed,
}

/// Creates `group` on `stream` at id 0, and the stream if there is none,
/// so that entries written before any daemon ran are read too.
pub async fn create<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<Created> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(Created::Created),
        Err(e) if is_busygroup(&e) => Ok(Created::Existed),
        Err(e) => Err(e),
    }
}

/// An entry delivered to a consumer of a group and not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    /// The consumer it was last delivered to.
    pub consumer: String,
    /// Milliseconds since it was last delivered.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// The oldest entries of `stream` pending in `group` for `min_idle` at
/// least, at most `count` (`XPENDING ... IDLE`): how entries that keep
/// failing are found. Fails with NOGROUP when the group does not exist.
pub async fn pending_idle<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    min_idle: Duration,
    count: usize,
) -> RedisResult<Vec<Pending>> {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(min_idle.as_millis() as u64)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, consumer, idle_ms, deliveries)| Pending {
            id,
            consumer,
            idle_ms,
            deliveries,
        })
        .collect())
}

/// Removes from `group` of `stream` the consumers other than `keep` that
/// hold no pending entry and have not read for longer than `idle_over`:
/// each daemon started with a fresh node id adds one, and they would pile
/// up. A consumer with pending entries is never removed (its entries would
/// go with it). Returns how many were removed; none when there is no such
/// group. One call looks at every consumer of the group: those left are the
/// daemons started within `idle_over` and those holding pending entries, a
/// few dozen.
pub async fn forget_idle_consumers<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    keep: &str,
    idle_over: Duration,
) -> RedisResult<usize> {
    let idle_limit = idle_over.as_millis() as u64;
    let consumers: Vec<HashMap<String, Value>> = match redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
    {
        Err(e) if is_nogroup(&e) => return Ok(0),
        other => other?,
    };
    let mut removed = 0;
    for consumer in consumers {
        let number = |k: &str| match consumer.get(k) {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        };
        let name = match consumer.get("name") {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => continue,
        };
        if name != keep && number("pending") == 0 && number("idle") > idle_limit {
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(stream)
                .arg(group)
                .arg(&name)
                .query_async::<()>(conn)
                .await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The groups of a stream, as `XINFO GROUPS` describes them (one map per
/// group: a handful per stream).
async fn groups<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
) -> RedisResult<Vec<HashMap<String, Value>>> {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
}

/// Where a group stands in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfinished {
    /// The oldest entry the group has not read, or read and not
    /// acknowledged: everything before it is done with.
    From(StreamId),
    /// No such stream or group (yet): nothing is known to be done with.
    NoGroup,
}

/// The oldest entry of `stream` that `group` has not finished with: what a
/// trim of the stream must keep, with everything after it.
pub async fn oldest_unfinished<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<Unfinished> {
    let groups = match groups(conn, stream).await {
        // "no such key": no stream yet.
        Err(e) if e.code() == Some("ERR") => return Ok(Unfinished::NoGroup),
        other => other?,
    };
    let last_read = groups.iter().find_map(|g| {
        let name = text(g.get("name")?)?;
        (name == group)
            .then(|| StreamId::parse(&text(g.get("last-delivered-id")?)?))
            .flatten()
    });
    let Some(last_read) = last_read else {
        return Ok(Unfinished::NoGroup);
    };
    // XPENDING's summary: count, smallest id, greatest id, consumers.
    let (_, smallest, _, _): (u64, Option<String>, Value, Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    let pending = smallest.and_then(|id| StreamId::parse(&id));
    // Entries after `last_read` are unread.
    let unread = last_read.next();
    Ok(Unfinished::From(pending.map_or(unread, |p| p.min(unread))))
}

/// The number of entries pending in each group of `stream`, by group name;
/// `None` when there is no such stream, or a key of another kind is in its
/// place.
pub async fn pending_by_group<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
) -> RedisResult<Option<Vec<(String, u64)>>> {
    let groups = match groups(conn, stream).await {
        Err(e) if e.code() == Some("ERR") || crate::retry::is_permanent(&e) => return Ok(None),
        other => other?,
    };
    Ok(Some(
        groups
            .iter()
            .filter_map(|g| {
                let name = g.get("name").and_then(text)?;
                let pending = redis::from_redis_value::<u64>(g.get("pending")?.clone()).ok()?;
                Some((name, pending))
            })
            .collect(),
    ))
}
