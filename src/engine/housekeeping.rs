//! Keeping the trigger groups bounded: starts that keep failing go to the
//! dead-letter stream, and consumers of daemons long gone are forgotten.

use super::Shared;
use crate::streams;
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
