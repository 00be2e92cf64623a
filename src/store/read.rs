//! Bounded reads of streams. A read takes at most a given number of
//! entries, and an entry larger than a given size never leaves Redis whole:
//! a script (`scripts/read_group.lua`, `scripts/read_streams.lua`) reads
//! without blocking and returns such an entry as a marker (its size and its
//! short identifying fields, see [`OVERSIZED_FIELD`]). Only when that finds
//! nothing does the reader block, for a few entries per stream
//! ([`BLOCKING_COUNT`]), which it checks the same way when they arrive; so
//! what a reader holds is bounded by `count` entries of `max_bytes`, plus
//! while idle those few entries per stream (whose size Redis's
//! `proto-max-bulk-len` bounds).

use super::scripts::{CLAIM_GROUP, LAST_ID, READ_GROUP, READ_STREAMS};
use crate::connection::Conn;
use crate::streams::{decode_autoclaim_reply, decode_read_reply, Entry};
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// The field of the marker that stands for an entry over the size limit:
/// its value is the entry's size in bytes.
pub const OVERSIZED_FIELD: &str = "sagaflow_oversized";

/// Identifying fields kept in a marker when they are short (128 bytes at
/// most), so that the refusal can name what it refused.
const KEPT: [&str; 7] = [
    "saga",
    "saga_id",
    "request_id",
    "correlation_id",
    "event_type",
    "status",
    "idempotency_key",
];

/// Entries per stream a blocking read of streams takes whole (one for a
/// group read). A handler's `progress` and final reply come together: four
/// lets them arrive in one read after an idle wait, instead of costing one
/// round trip each, while keeping what an idle read can bring in whatever
/// its size to a handful of entries.
pub const BLOCKING_COUNT: usize = 4;

/// The size of an entry as the scripts count it: field names and values.
pub fn entry_bytes(entry: &Entry) -> usize {
    entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The size an entry had when it was read, if it was over the limit.
pub fn oversized(entry: &Entry) -> Option<usize> {
    let value = entry.fields.get(OVERSIZED_FIELD)?;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Replaces an entry over `max_bytes` by its marker, as the scripts do.
fn shrink(entry: &mut Entry, max_bytes: usize) {
    let size = entry_bytes(entry);
    if size <= max_bytes {
        return;
    }
    let mut fields = std::mem::take(&mut entry.fields);
    fields.retain(|k, v| KEPT.contains(&k.as_str()) && v.len() <= 128);
    fields.insert(OVERSIZED_FIELD.to_owned(), size.to_string().into_bytes());
    entry.fields = fields;
}

/// Runs a blocking read, whose entries come whole, and shrinks those over
/// `max_bytes` as the scripts would have.
async fn blocking<C: ConnectionLike + Send>(
    conn: &mut C,
    cmd: &redis::Cmd,
    max_bytes: usize,
) -> RedisResult<Vec<Entry>> {
    let reply: redis::Value = cmd.query_async(conn).await?;
    let mut entries = decode_read_reply(&reply);
    for entry in &mut entries {
        shrink(entry, max_bytes);
    }
    Ok(entries)
}

/// On a cluster, how long a blocking read waits on the first slot's
/// streams when others, in other slots, are read without blocking between
/// two waits: a command or script cannot span slots, so those are looked
/// at this often (10 times a second at most, per reader).
pub const CROSS_SLOT_BLOCK: Duration = Duration::from_millis(100);

/// `items` in groups that share a cluster slot, in the order each slot is
/// first met; one group with all of them on one Redis.
fn by_slot<'a, T>(conn: &Conn, items: &'a [T], key: impl Fn(&T) -> &str) -> Vec<Vec<&'a T>> {
    if !conn.is_cluster() {
        return vec![items.iter().collect()];
    }
    let mut groups: Vec<(u16, Vec<&T>)> = Vec::new();
    for item in items {
        let slot = super::keys::slot(key(item));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(item),
            None => groups.push((slot, vec![item])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// New entries of `streams` through `group`, at most `count`, without
/// blocking.
pub async fn group_now(
    conn: &mut Conn,
    streams: &[String],
    group: &str,
    consumer: &str,
    count: usize,
    max_bytes: usize,
) -> RedisResult<Vec<Entry>> {
    let mut entries = Vec::new();
    for slot in by_slot(conn, streams, |s| s.as_str()) {
        if entries.len() >= count {
            break;
        }
        let mut call = READ_GROUP.prepare_invoke();
        for stream in slot {
            call.key(stream);
        }
        call.arg(group)
            .arg(consumer)
            .arg(count - entries.len())
            .arg(max_bytes);
        let reply: redis::Value = call.invoke_async(conn).await?;
        entries.extend(decode_read_reply(&reply));
    }
    Ok(entries)
}

/// New entries of `streams` through `group`: those there now (at most
/// `count`), else the first to come within `block`, one per stream at most.
/// With `wait_first` (the last read took everything there was), it waits at
/// once, sparing the look that would find nothing.
#[allow(clippy::too_many_arguments)]
pub async fn group(
    conn: &mut Conn,
    streams: &[String],
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
    max_bytes: usize,
    wait_first: bool,
) -> RedisResult<Read> {
    let slots = by_slot(conn, streams, |s| s.as_str());
    let (waited, block) = match slots.as_slice() {
        [only] => (only.clone(), block),
        [first, ..] => (first.clone(), block.min(CROSS_SLOT_BLOCK)),
        [] => (Vec::new(), block),
    };
    if !wait_first || slots.len() > 1 {
        let now = group_now(conn, streams, group, consumer, count, max_bytes).await?;
        if !now.is_empty() {
            return Ok(Read {
                drained: now.len() < count,
                entries: now,
            });
        }
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&waited);
    for _ in &waited {
        cmd.arg(">");
    }
    let entries = blocking(conn, &cmd, max_bytes).await?;
    Ok(Read {
        drained: entries.is_empty(),
        entries,
    })
}

/// Takes over at most `count` entries of `stream` that other consumers of
/// `group` left unacknowledged for `min_idle`: each such take counts as a
/// delivery, which is how entries that keep failing are found.
pub async fn claim_idle<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    count: usize,
    max_bytes: usize,
) -> RedisResult<Vec<Entry>> {
    let reply: redis::Value = CLAIM_GROUP
        .key(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg(count)
        .arg(max_bytes)
        .invoke_async(conn)
        .await?;
    Ok(decode_autoclaim_reply(stream, &reply).1)
}

/// What a read of streams after given ids found.
#[derive(Debug, Default)]
pub struct Read {
    pub entries: Vec<Entry>,
    /// True when the read took everything the streams held when it began:
    /// no entry added before that is left unread.
    pub drained: bool,
}

/// The entries of each `(stream, after id)`: those there now (at most
/// `count` in all), else the first to come within `block`, a few per
/// stream at most ([`BLOCKING_COUNT`]). With `wait_first` (the last read
/// took everything there was), it waits at once, sparing the look that
/// would find nothing.
pub async fn after(
    conn: &mut Conn,
    streams: &[(&str, &str)],
    count: usize,
    block: Duration,
    max_bytes: usize,
    wait_first: bool,
) -> RedisResult<Read> {
    let slots = by_slot(conn, streams, |(s, _)| s);
    let (waited, block) = match slots.as_slice() {
        [only] => (only.clone(), block),
        [first, ..] => (first.clone(), block.min(CROSS_SLOT_BLOCK)),
        [] => (Vec::new(), block),
    };
    if !wait_first || slots.len() > 1 {
        let mut entries = Vec::new();
        for slot in &slots {
            if entries.len() >= count {
                break;
            }
            let mut call = READ_STREAMS.prepare_invoke();
            for (stream, _) in slot {
                call.key(*stream);
            }
            call.arg(count - entries.len()).arg(max_bytes);
            for (_, id) in slot {
                call.arg(*id);
            }
            let reply: redis::Value = call.invoke_async(conn).await?;
            entries.extend(decode_read_reply(&reply));
        }
        if !entries.is_empty() {
            return Ok(Read {
                drained: entries.len() < count,
                entries,
            });
        }
    }
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(BLOCKING_COUNT)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS");
    for (stream, _) in &waited {
        cmd.arg(*stream);
    }
    for (_, id) in &waited {
        cmd.arg(*id);
    }
    let entries = blocking(conn, &cmd, max_bytes).await?;
    // A stream that gave fewer than it could has nothing more; one that
    // gave nothing had nothing.
    let mut per_stream: std::collections::HashMap<&str, usize> = Default::default();
    for entry in &entries {
        *per_stream.entry(entry.stream.as_str()).or_default() += 1;
    }
    let drained = per_stream.values().all(|n| *n < BLOCKING_COUNT);
    Ok(Read { drained, entries })
}

/// The id of the last entry of `stream` (`0-0` when it is empty), read
/// without the entry: where to start following a stream others write.
pub async fn last_id<C: ConnectionLike + Send>(conn: &mut C, stream: &str) -> RedisResult<String> {
    LAST_ID.key(stream).invoke_async(conn).await
}

/// The keys among `keys` that hold something other than a stream: a read
/// that fails with WRONGTYPE leaves them out from then on.
pub async fn not_streams(conn: &mut Conn, keys: &[&str]) -> RedisResult<Vec<String>> {
    let mut kinds: Vec<String> = Vec::new();
    for slot in by_slot(conn, keys, |k| k) {
        let mut pipe = redis::pipe();
        for key in slot {
            pipe.cmd("TYPE").arg(*key);
        }
        kinds.extend(pipe.query_async::<Vec<String>>(conn).await?);
    }
    // In the order of `keys`: regroup by slot kept each slot's order.
    let mut ordered: Vec<&str> = Vec::new();
    for slot in by_slot(conn, keys, |k| k) {
        ordered.extend(slot.into_iter().copied());
    }
    let keys = ordered;
    Ok(keys
        .iter()
        .zip(kinds)
        .filter(|(_, kind)| kind != "stream" && kind != "none")
        .map(|(key, _)| (*key).to_owned())
        .collect())
}
