//! Keeping Redis bounded: starts that keep failing go to the dead-letter
//! stream, consumers of daemons long gone are forgotten, and the command,
//! event and trigger streams lose their entries older than the retention.

use super::Shared;
use crate::streams::{self, text, StreamId};
use crate::telemetry::metrics;
use std::time::Duration;

/// Moves starts that were delivered `max_deliveries` times without ever
/// being acknowledged (each time, the daemon that took one died or failed
/// on it) to the dead-letter stream, with the reason, and acknowledges them.
pub(super) async fn dead_letter_poison(
    shared: &Shared,
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    min_idle: u64,
) -> redis::RedisResult<()> {
    let settings = &shared.settings;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(&settings.trigger_group)
        .arg("IDLE")
        .arg(min_idle)
        .arg("-")
        .arg("+")
        .arg(settings.read_batch)
        .query_async(conn)
        .await?;
    for (id, consumer, _, deliveries) in pending {
        if deliveries < settings.max_deliveries {
            continue;
        }
        let entry: redis::Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&id)
            .arg(&id)
            .query_async(conn)
            .await?;
        let fields = streams::decode_range_reply(stream, &entry)
            .pop()
            .map(|e| {
                e.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .unwrap_or_default();
        let reason =
            format!("delivered {deliveries} times without being processed (last to {consumer})");
        tracing::error!(%stream, entry_id = %id, %reason, "start moved to the dead-letter stream");
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(&settings.dead_letter_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(settings.events_maxlen)
            .arg("*")
            .arg("stream")
            .arg(stream)
            .arg("entry_id")
            .arg(&id)
            .arg("reason")
            .arg(&reason)
            .arg("fields")
            .arg(serde_json::to_string(&fields).expect("strings serialize"))
            .ignore()
            .cmd("XACK")
            .arg(stream)
            .arg(&settings.trigger_group)
            .arg(&id)
            .ignore()
            .query_async::<()>(conn)
            .await?;
    }
    Ok(())
}

/// How often consumers of daemons long gone are removed from the trigger
/// groups.
pub(super) const CLEAN_EVERY: Duration = Duration::from_secs(60);

/// Removes from the trigger groups the consumers (daemons) that hold no
/// pending entry and have not read for a hundred leases: each daemon started
/// with a fresh node id adds one, and they would pile up.
pub(super) async fn forget_idle_consumers(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let settings = &shared.settings;
    let idle_limit = settings.lease_ttl.as_millis() as u64 * 100;
    for stream in super::trigger_streams(settings, &shared.catalog) {
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
            match redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg(&settings.trigger_group)
                .query_async(&mut conn)
                .await
            {
                Err(e) if super::is_nogroup(&e) => continue,
                other => other?,
            };
        for consumer in consumers {
            let number = |k: &str| match consumer.get(k) {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            };
            let name = match consumer.get("name") {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => continue,
            };
            if name != settings.node_id && number("pending") == 0 && number("idle") > idle_limit {
                redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(&settings.trigger_group)
                    .arg(&name)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// How often the streams are trimmed: a quarter of the retention, between
/// a second and a minute.
pub(super) fn trim_every(settings: &crate::config::Settings) -> Duration {
    (settings.stream_retention / 4).clamp(Duration::from_secs(1), CLEAN_EVERY)
}

/// A command stream keeps its entries this long past the longest timeout
/// of the commands sent to it, for clocks that differ between hosts: a
/// handler never misses a command that is still awaited.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// How long a command stream keeps its entries, given the longest timeout
/// of the commands sent to it.
pub fn command_stream_keep(retention: Duration, longest_timeout: Duration) -> Duration {
    retention.max(longest_timeout + COMMAND_GRACE)
}

/// Trims the streams the daemon writes to entries younger than
/// `stream_retention` (`XTRIM MINID ~`, so a little more may stay). A
/// command stream keeps its commands until a little past their longest
/// timeout; a trigger stream keeps every start the daemon group has not yet
/// read or not yet finished with. Other daemons do the same: trimming twice
/// is harmless.
pub(super) async fn trim_streams(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let settings = &shared.settings;
    let now = super::now_ms();
    let cut = |keep: Duration| StreamId::at_ms(now.saturating_sub(keep.as_millis() as u64));
    let mut pipe = redis::pipe();
    let mut trim = |stream: &str, below: StreamId| {
        pipe.cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg("~")
            .arg(below.to_string())
            // `~` alone removes at most 10,000 entries a call, fewer than
            // a busy second adds.
            .arg("LIMIT")
            .arg(0)
            .ignore();
    };
    trim(&settings.events_stream, cut(settings.stream_retention));
    for (stream, longest) in shared.catalog.command_streams() {
        trim(
            &stream,
            cut(command_stream_keep(settings.stream_retention, longest)),
        );
    }
    for stream in super::trigger_streams(settings, &shared.catalog) {
        if let Some(unfinished) = oldest_unfinished(&mut conn, &stream, settings).await? {
            trim(&stream, cut(settings.stream_retention).min(unfinished));
        }
    }
    pipe.query_async::<()>(&mut conn).await
}

/// The oldest entry of a trigger stream that the daemon group has not read
/// or not acknowledged; `None` when the group does not exist (yet), and the
/// stream must be left alone.
async fn oldest_unfinished(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    settings: &crate::config::Settings,
) -> redis::RedisResult<Option<StreamId>> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        // "no such key": no stream yet, so nothing to trim.
        Err(e) if e.code() == Some("ERR") => return Ok(None),
        other => other?,
    };
    let last_read = groups.iter().find_map(|g| {
        let name = text(g.get("name")?)?;
        (name == settings.trigger_group)
            .then(|| StreamId::parse(&text(g.get("last-delivered-id")?)?))
            .flatten()
    });
    let Some(last_read) = last_read else {
        return Ok(None);
    };
    // XPENDING's summary: count, smallest id, greatest id, consumers.
    let (_, smallest, _, _): (u64, Option<String>, redis::Value, redis::Value) =
        redis::cmd("XPENDING")
            .arg(stream)
            .arg(&settings.trigger_group)
            .query_async(conn)
            .await?;
    let pending = smallest.and_then(|id| StreamId::parse(&id));
    // Entries after `last_read` are unread; MINID keeps the one given.
    let unread = last_read.next();
    Ok(Some(pending.map_or(unread, |p| p.min(unread))))
}

/// How often the pending entries of the streams are measured.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Sets the pending-entries gauge of every consumer group on the trigger
/// and command streams: the daemons' starts under way, and the commands
/// handlers took and have not answered.
pub(super) async fn report_pending(shared: &Shared) -> redis::RedisResult<()> {
    let mut conn = shared.conn.clone();
    let mut streams = super::trigger_streams(&shared.settings, &shared.catalog);
    streams.extend(shared.catalog.command_streams().into_iter().map(|(s, _)| s));
    for stream in streams {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut conn)
            .await
        {
            // "no such key": no stream yet.
            Err(e) if e.code() == Some("ERR") => continue,
            other => other?,
        };
        let pending: Vec<(String, u64)> = groups
            .iter()
            .filter_map(|g| {
                let name = g.get("name").and_then(text)?;
                let pending = redis::from_redis_value::<u64>(g.get("pending")?.clone()).ok()?;
                Some((name, pending))
            })
            .collect();
        metrics::pending_entries(&stream, &pending);
    }
    Ok(())
}
