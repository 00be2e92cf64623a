//! Redis Streams plumbing shared by the daemon and the handler SDK:
//! decoding of read replies into entries without trusting their content
//! (connections are in [`crate::connection`]).

use crate::protocol::RawFields;
use redis::{RedisResult, Value};
use std::time::Duration;

/// One stream entry as read.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub fields: RawFields,
    /// Set when the entry cannot be read as fields at all (a field name
    /// that is not UTF-8, an odd number of items): it is malformed input.
    pub malformed: Option<String>,
}

/// A reply value as text: bulk and simple strings, and integers.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Double(d) => d.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// Pairs of a RESP2 array or a RESP3 map.
fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|c| (&c[0], &c[1])).collect())
        }
        Value::Map(items) => Some(items.iter().map(|(k, v)| (k, v)).collect()),
        _ => None,
    }
}

fn decode_entry(stream: &str, v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else { return None };
    let id = text(parts.first()?)?;
    let mut entry = Entry {
        stream: stream.to_owned(),
        id,
        fields: RawFields::new(),
        malformed: None,
    };
    match parts.get(1) {
        // An entry deleted while still pending reads back as nil.
        None | Some(Value::Nil) => entry.malformed = Some("entry was deleted".into()),
        Some(body) => match pairs(body) {
            None => entry.malformed = Some("entry fields are not name/value pairs".into()),
            Some(pairs) => {
                for (k, v) in pairs {
                    match text(k) {
                        Some(name) => {
                            entry.fields.insert(name, bytes(v));
                        }
                        None => entry.malformed = Some("a field name is not valid UTF-8".into()),
                    }
                }
            }
        },
    }
    Some(entry)
}

/// Decodes the reply of `XREAD` / `XREADGROUP` (nil when the block timed
/// out). Entries whose id cannot be read are dropped: they cannot be
/// acknowledged or skipped by id anyway.
pub fn decode_read_reply(v: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return out,
        Value::Array(items) => items
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => return out,
    };
    for (key, entries) in streams {
        let stream = text(key).unwrap_or_default();
        if let Value::Array(entries) = entries {
            out.extend(entries.iter().filter_map(|e| decode_entry(&stream, e)));
        }
    }
    out
}

/// Decodes the reply of `XRANGE` / `XREVRANGE` on `stream`.
pub fn decode_range_reply(stream: &str, v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(entries) => entries
            .iter()
            .filter_map(|e| decode_entry(stream, e))
            .collect(),
        _ => Vec::new(),
    }
}

/// Up to `count` entries of `stream` from `from` to `to` (`XRANGE`
/// bounds: `-`, `+`, an id, or `(<id>` to leave it out), oldest first.
pub async fn range<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    from: &str,
    to: &str,
    count: usize,
) -> RedisResult<Vec<Entry>> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(decode_range_reply(stream, &reply))
}

/// The id of the last entry of `stream` (`0-0` when it is empty): where to
/// start following it without missing what comes next.
pub async fn last_id<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
) -> RedisResult<String> {
    let last: Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(decode_range_reply(stream, &last)
        .pop()
        .map_or_else(|| "0-0".to_owned(), |e| e.id))
}

/// The entries of `stream` after id `after`, at most `count` of them
/// (`None`: no bound), waiting up to `block` for one: the step of every
/// reader that follows one stream without a group.
pub async fn read_after<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    after: &str,
    count: Option<usize>,
    block: Duration,
) -> RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREAD");
    if let Some(count) = count {
        cmd.arg("COUNT").arg(count);
    }
    let value: Value = cmd
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(after)
        .query_async(conn)
        .await?;
    Ok(decode_read_reply(&value))
}

/// Decodes the entries part of an `XAUTOCLAIM` reply: `[cursor, entries, deleted]`.
pub fn decode_autoclaim_reply(stream: &str, v: &Value) -> (String, Vec<Entry>) {
    let Value::Array(parts) = v else {
        return ("0-0".into(), Vec::new());
    };
    let cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
    let entries = match parts.get(1) {
        Some(Value::Array(entries)) => entries
            .iter()
            .filter_map(|e| decode_entry(stream, e))
            .collect(),
        _ => Vec::new(),
    };
    (cursor, entries)
}

/// Which failed calls can never succeed: moved to [`crate::retry`], the
/// retry policy, and named here too for the code that sorts its errors by it.
pub use crate::retry::is_permanent;

/// True for the error Redis gives when a consumer group already exists.
pub fn is_busygroup(e: &redis::RedisError) -> bool {
    e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP")
}

/// True for Redis's answer about a consumer group that does not exist.
pub fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// A stream entry id, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId(u64, u64);

impl StreamId {
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The first id of a millisecond.
    pub fn at_ms(ms: u64) -> Self {
        Self(ms, 0)
    }

    /// The unix ms the id was made at (on Redis's clock, for ids Redis
    /// chose).
    pub fn ms(self) -> u64 {
        self.0
    }

    /// The id right after this one.
    pub fn next(self) -> Self {
        Self(self.0, self.1.saturating_add(1))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn decodes_entries_and_flags_malformed_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"mission:start"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"area"), bulk(b"hall-a")]),
                ]),
                Value::Array(vec![
                    bulk(b"2-0"),
                    Value::Array(vec![bulk(&[0xff]), bulk(b"x")]),
                ]),
                Value::Array(vec![bulk(b"3-0"), Value::Nil]),
            ]),
        ])]);
        let entries = decode_read_reply(&reply);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].stream, "mission:start");
        assert_eq!(entries[0].fields["area"], b"hall-a");
        assert!(entries[0].malformed.is_none());
        assert!(entries[1].malformed.as_deref().unwrap().contains("UTF-8"));
        assert!(entries[2].malformed.is_some());
        assert!(decode_read_reply(&Value::Nil).is_empty());
    }

    #[test]
    fn stream_ids_order_as_redis_orders_them() {
        let id = |s| StreamId::parse(s).unwrap();
        assert!(id("9-5") < id("10-0"));
        assert!(id("10-2") < id("10-10"));
        assert_eq!(id("10"), id("10-0"));
        assert_eq!(id("1700000000000-3").to_string(), "1700000000000-3");
        assert_eq!(StreamId::parse("x-1"), None);
    }
}
