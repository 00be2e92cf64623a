//! The runner's Redis edge: stream replies decoded into entries (leniently,
//! so one bad entry cannot hide the others of its batch), replies written,
//! and retry with backoff.

use crate::protocol::RawFields;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, RedisResult, Value};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One stream entry.
pub(super) struct Entry {
    pub(super) id: String,
    pub(super) fields: RawFields,
}

/// `XADD stream * field value ...`.
pub(crate) async fn xadd<K: AsRef<str>, V: AsRef<str>>(
    conn: &mut ConnectionManager,
    stream: &str,
    fields: &[(K, V)],
) -> RedisResult<String> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(k.as_ref()).arg(v.as_ref());
    }
    cmd.query_async(conn).await
}

/// Runs `op` until it succeeds, backing off between failures; gives up
/// (`None`) only when shutdown is requested, leaving the entry pending.
pub(super) async fn retrying<T, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RedisResult<T>>,
{
    let mut backoff = Backoff::default();
    loop {
        match op().await {
            Ok(value) => {
                backoff.succeeded(what);
                return Some(value);
            }
            Err(e) => {
                let delay = backoff.failed(what, &e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Exponential backoff that logs the first error of a streak and the
/// recovery, not every retry.
#[derive(Default)]
pub(super) struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    pub(super) fn failed(&mut self, what: &str, error: &RedisError) -> Duration {
        let delay = match self.delay {
            None => {
                tracing::warn!(%error, "Redis error ({what}); retrying with backoff");
                BACKOFF_MIN
            }
            Some(d) => {
                tracing::debug!(%error, "Redis still failing ({what})");
                (d * 2).min(BACKOFF_MAX)
            }
        };
        self.delay = Some(delay);
        delay
    }

    pub(super) fn succeeded(&mut self, what: &str) {
        if self.delay.take().is_some() {
            tracing::info!("Redis is back ({what})");
        }
    }
}

pub(super) fn decode_read(reply: Value) -> Vec<Entry> {
    if matches!(reply, Value::Nil) {
        return Vec::new();
    }
    match redis::from_redis_value_ref::<StreamReadReply>(&reply) {
        Ok(read) => read
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(Entry::from)
            .collect(),
        // E.g. a field name that is not UTF-8: read what can be read, so one
        // bad entry cannot hide the others of its batch.
        Err(_) => match reply {
            Value::Array(streams) => streams
                .iter()
                .flat_map(|s| match s {
                    Value::Array(pair) if pair.len() == 2 => lenient_entries(&pair[1]),
                    _ => Vec::new(),
                })
                .collect(),
            Value::Map(streams) => streams
                .iter()
                .flat_map(|(_, e)| lenient_entries(e))
                .collect(),
            _ => Vec::new(),
        },
    }
}

/// The next cursor and the claimed entries of an XAUTOCLAIM reply.
pub(super) fn decode_autoclaim(reply: Value) -> (Option<String>, Vec<Entry>) {
    match redis::from_redis_value_ref::<StreamAutoClaimReply>(&reply) {
        Ok(claim) => (
            Some(claim.next_stream_id),
            claim.claimed.into_iter().map(Entry::from).collect(),
        ),
        Err(_) => match &reply {
            Value::Array(items) if items.len() >= 2 => (
                bytes(&items[0]).map(|b| String::from_utf8_lossy(&b).into_owned()),
                lenient_entries(&items[1]),
            ),
            _ => (None, Vec::new()),
        },
    }
}

impl From<StreamId> for Entry {
    fn from(s: StreamId) -> Self {
        let fields = s
            .map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), bytes(v)?)))
            .collect();
        Entry { id: s.id, fields }
    }
}

/// `[[id, [field, value, ...]], ...]`, skipping what is not of that shape.
fn lenient_entries(list: &Value) -> Vec<Entry> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = String::from_utf8(bytes(parts.first()?)?).ok()?;
            let pairs: Vec<(&Value, &Value)> = match parts.get(1) {
                Some(Value::Array(flat)) => flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
                Some(Value::Map(map)) => map.iter().map(|(k, v)| (k, v)).collect(),
                _ => Vec::new(),
            };
            let fields = pairs
                .into_iter()
                .filter_map(|(k, v)| {
                    Some((String::from_utf8_lossy(&bytes(k)?).into_owned(), bytes(v)?))
                })
                .collect();
            Some(Entry { id, fields })
        })
        .collect()
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[(&[u8], &[u8])]) -> Value {
        let flat = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id.as_bytes()), Value::Array(flat)])
    }

    fn read_reply(entries: Vec<Value>) -> Value {
        Value::Array(vec![Value::Array(vec![
            bulk(b"resources:commands"),
            Value::Array(entries),
        ])])
    }

    #[test]
    fn decodes_a_read() {
        let entries = decode_read(read_reply(vec![entry("1-0", &[(b"a", b"1")])]));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].fields["a"], b"1");
        assert!(decode_read(Value::Nil).is_empty());
    }

    #[test]
    fn a_field_name_that_is_not_utf8_hides_no_other_entry() {
        let reply = read_reply(vec![
            entry("1-0", &[(b"\xff\xfe", b"x"), (b"a", b"\xc3\x28")]),
            entry("2-0", &[(b"a", b"2")]),
        ]);
        let entries = decode_read(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].fields["a"], b"\xc3\x28");
        assert_eq!(entries[1].fields["a"], b"2");
    }

    #[test]
    fn decodes_an_autoclaim() {
        let reply = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![entry("3-0", &[(b"a", b"3")])]),
            Value::Array(vec![]),
        ]);
        let (next, entries) = decode_autoclaim(reply);
        assert_eq!(next.as_deref(), Some("0-0"));
        assert_eq!(entries[0].id, "3-0");
        let reply = Value::Array(vec![
            bulk(b"5-0"),
            Value::Array(vec![entry("4-0", &[(b"\xff", b"x")])]),
            Value::Array(vec![]),
        ]);
        let (next, entries) = decode_autoclaim(reply);
        assert_eq!((next.as_deref(), entries.len()), (Some("5-0"), 1));
    }
}
