//! Keeping streams bounded: entries that can never be processed go to the
//! dead-letter stream as bounded copies (and parked sagas leave a note
//! there), trigger streams (written by starters, so capped by no `XADD` of
//! ours) are trimmed by age and by count without losing a start the daemons
//! have not finished with, the streams the daemons write are trimmed by
//! age, reply streams as their replies are applied, and partitions forget
//! ended sagas once their records expired.

use super::scripts::{DEAD_LETTER, TRIM_TRIGGER};
use crate::config::Settings;
use crate::connection::Conn;
use crate::streams::StreamId;
use redis::aio::ConnectionLike;
use redis::RedisResult;
use std::time::Duration;

/// Bytes kept of each field value in a dead-letter copy: enough to
/// recognise the entry, never enough to carry its bulk along.
pub const DEAD_LETTER_VALUE_BYTES: usize = 256;
/// Fields kept in a dead-letter copy.
pub const DEAD_LETTER_FIELDS: usize = 32;

/// Moves entry `id` of `stream` to the dead-letter stream as a bounded
/// copy with `reason`, and acknowledges it in `group` (if any). Returns
/// false when the dead-letter stream cannot take it (the entry is
/// acknowledged all the same).
///
/// On one Redis this is one script. On a cluster, where the two streams may
/// be in different slots, the copy is made in the entry's slot, added to the
/// dead-letter stream, then the entry is acknowledged: a crash in between
/// leaves the entry pending, to be moved again (a second copy, never none).
pub async fn dead_letter(
    conn: &mut Conn,
    settings: &Settings,
    stream: &str,
    group: Option<&str>,
    id: &str,
    reason: &str,
) -> RedisResult<bool> {
    let mut call = DEAD_LETTER.prepare_invoke();
    call.key(stream);
    let cluster = conn.is_cluster();
    if !cluster {
        call.key(&settings.dead_letter_stream);
    }
    call.arg(group.unwrap_or(""))
        .arg(id)
        .arg(reason)
        .arg(settings.events_maxlen)
        .arg(DEAD_LETTER_VALUE_BYTES)
        .arg(DEAD_LETTER_FIELDS);
    if !cluster {
        let copied: i64 = call.invoke_async(conn).await?;
        return Ok(copied == 1);
    }
    let copy: Vec<String> = call.invoke_async(conn).await?;
    let added: RedisResult<String> = redis::cmd("XADD")
        .arg(&settings.dead_letter_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.events_maxlen)
        .arg("*")
        .arg(&copy)
        .query_async(conn)
        .await;
    let copied = match added {
        Ok(_) => true,
        Err(e) if e.code() == Some("WRONGTYPE") => false,
        Err(e) => return Err(e),
    };
    if let Some(group) = group {
        redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(id)
            .query_async::<i64>(conn)
            .await
            .or_else(|e| {
                if e.code() == Some("WRONGTYPE") {
                    Ok(0)
                } else {
                    Err(e)
                }
            })?;
    }
    Ok(copied)
}

/// Notes on the dead-letter stream that the saga `saga_id` (of definition
/// `saga`) was parked as failed because a transition of it can never be
/// written: an entry of `saga_id`, `saga`, `reason` and `from`
/// (`transition`), the stream capped like the audit stream. The reason is
/// the daemon's own text, a line long.
pub async fn note_parked<C: ConnectionLike + Send>(
    conn: &mut C,
    settings: &Settings,
    saga_id: &str,
    saga: &str,
    reason: &str,
) -> RedisResult<()> {
    redis::cmd("XADD")
        .arg(&settings.dead_letter_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(settings.events_maxlen)
        .arg("*")
        .arg("saga_id")
        .arg(saga_id)
        .arg("saga")
        .arg(saga)
        .arg("reason")
        .arg(reason)
        .arg("from")
        .arg("transition")
        .query_async(conn)
        .await
}

/// Pages of 1,000 entries one trim of a trigger stream looks through, at
/// most, to find where its cap cuts: bounds the time Redis spends in one
/// call (a few milliseconds); a stream far over its cap is brought under it
/// over several calls.
const TRIM_PAGES: usize = 20;

/// Trims a trigger stream to the entries younger than `below_age` and
/// within `maxlen` of its end, never removing `keep_from` or anything after
/// it. Returns the number of entries removed.
pub async fn trim_trigger<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    below_age: StreamId,
    keep_from: StreamId,
    maxlen: usize,
) -> RedisResult<u64> {
    TRIM_TRIGGER
        .key(stream)
        .arg(below_age.to_string())
        .arg(keep_from.to_string())
        .arg(maxlen)
        .arg(TRIM_PAGES)
        .invoke_async(conn)
        .await
}

/// Forgets, in one partition, ended sagas whose records expired (those
/// indexed as ended before `before_ms`) and claims older than it.
pub async fn trim_partition<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &super::keys::Keys,
    p: super::keys::Partition,
    before_ms: u64,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for phase in ["completed", "compensated", "failed"] {
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(keys.index(p, phase))
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .ignore();
    }
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(keys.fenced(p))
        .arg("-inf")
        .arg(format!("({before_ms}"))
        .ignore();
    pipe.query_async(conn).await
}

/// Trims each `(stream, below)` to its entries from `below` on (`XTRIM
/// MINID ~`: whole nodes of the stream go, so a few older entries may
/// stay), in one pipeline per slot. Every entry below goes in one call, not
/// at most 10,000 as `~` alone would remove, fewer than a busy second adds.
pub async fn trim_by_age(conn: &mut Conn, streams: &[(String, StreamId)]) -> RedisResult<()> {
    let cmds = streams
        .iter()
        .map(|(stream, below)| {
            let mut cmd = redis::cmd("XTRIM");
            cmd.arg(stream)
                .arg("MINID")
                .arg("~")
                .arg(below.to_string())
                .arg("LIMIT")
                .arg(0);
            (stream.clone(), cmd)
        })
        .collect();
    conn.run_all(cmds).await
}

/// Trims `stream` to about its last `maxlen` entries and to those from
/// `below` on (`~`, each without the 10,000 entries a call limit): for a
/// stream written through `XADD`s that cap nothing (the control stream).
pub async fn trim_capped<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    maxlen: usize,
    below: StreamId,
) -> RedisResult<()> {
    redis::pipe()
        .cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("LIMIT")
        .arg(0)
        .ignore()
        .cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("~")
        .arg(below.to_string())
        .arg("LIMIT")
        .arg(0)
        .ignore()
        .query_async(conn)
        .await
}

/// Tidies reply streams a daemon reads: removes the entries of `stream`
/// below `below` (exactly: they were all applied), and makes each of
/// `read` expire `ttl` from now (a second at least), so that the streams of
/// a daemon gone for good go away by themselves. One pipeline per slot.
pub async fn tidy_replies(
    conn: &mut Conn,
    stream: &str,
    below: Option<StreamId>,
    read: impl IntoIterator<Item = String>,
    ttl: Duration,
) -> RedisResult<()> {
    let mut cmds = Vec::new();
    if let Some(below) = below {
        let mut trim = redis::cmd("XTRIM");
        trim.arg(stream).arg("MINID").arg(below.to_string());
        cmds.push((stream.to_owned(), trim));
    }
    for key in read {
        let mut expire = redis::cmd("EXPIRE");
        expire.arg(&key).arg(ttl.as_secs().max(1));
        cmds.push((key, expire));
    }
    conn.run_all(cmds).await
}
