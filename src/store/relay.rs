//! The relay of a partition's outbox, on a cluster: the writes a transition
//! recorded beside its saga (commands, audit events, acknowledgements),
//! made in each key's own slot (`scripts/relay.lua`).
//!
//! An outbox is relayed from its oldest entry on, in order, by whoever
//! relays it (the daemon that wrote, right after; every daemon, in its
//! sweep, for what a daemon that died left): each write into a key is made
//! only if the entry is past that key's relay mark for the partition, kept
//! in the key's slot and moved in the same script. So a write that must be
//! made once (a command, an audit event) is, however many relays run at
//! once or start again after a crash; an entry leaves the outbox only once
//! all of it was relayed.
//!
//! With `replicas` set (the `wait_replicas` setting), an entry is relayed
//! only once the outbox's master has passed it to that many replicas
//! (`WAIT`), and removed only once each key's master has passed the relayed
//! write on: a failover, which loses what a replica did not get, then loses
//! neither a transition whose writes were made nor a write whose entry is
//! gone.

use super::keys::{Keys, Partition};
use super::scripts::RELAY;
use super::transition::{write_args, Write};
use crate::connection::Conn;
use redis::RedisResult;
use std::collections::BTreeMap;
use std::time::Duration;

/// Outbox entries taken per round of a relay: each is one transition's
/// writes (a few commands and events, each bounded by the protocol's
/// limits).
pub const RELAY_BATCH: usize = 64;

/// How long a relay waits for replicas before it gives up this round (and
/// asks how many the master has: see [`Conn::wait_replicas`]).
const WAIT_TIMEOUT: Duration = Duration::from_millis(250);

/// What one round of a relay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Outbox entries relayed and removed.
    pub entries: usize,
    /// Writes made (those relayed before are not counted).
    pub writes: usize,
    /// Entries that can never be relayed (a key of the wrong kind, an
    /// entry that does not decode), removed with the reason.
    pub refused: Vec<(String, String)>,
    /// The round stopped early: replicas did not confirm in time.
    pub unconfirmed: bool,
}

/// Relays the oldest entries of a partition's outbox (at most
/// [`RELAY_BATCH`]), older than `min_age_ms` on the outbox's ids when
/// given; returns what it did. Call again while `entries` is
/// [`RELAY_BATCH`].
pub async fn relay(
    conn: &mut Conn,
    keys: &Keys,
    p: Partition,
    replicas: usize,
    older_than_ms: Option<u64>,
) -> RedisResult<Relayed> {
    let outbox = keys.outbox(p);
    let end = match older_than_ms {
        Some(ms) => format!("{}", ms.saturating_sub(1)),
        None => "+".to_owned(),
    };
    let entries: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&outbox)
        .arg("-")
        .arg(&end)
        .arg("COUNT")
        .arg(RELAY_BATCH)
        .query_async(conn)
        .await?;
    let mut done = Relayed::default();
    if entries.is_empty() {
        return Ok(done);
    }
    if replicas > 0 && !conn.wait_replicas(&outbox, replicas, WAIT_TIMEOUT).await? {
        done.unconfirmed = true;
        return Ok(done);
    }
    let mut touched: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    for (id, fields) in &entries {
        let writes: Vec<Write> = match fields.get("w").map(|w| serde_json::from_str(w)) {
            Some(Ok(writes)) => writes,
            Some(Err(e)) => {
                done.refused
                    .push((id.clone(), format!("the entry does not decode: {e}")));
                ids.push(id.clone());
                continue;
            }
            None => Vec::new(),
        };
        // One script per key, in the entry's order of first appearance.
        let mut by_key: Vec<(String, Vec<Write>)> = Vec::new();
        for w in writes {
            match by_key.iter_mut().find(|(k, _)| *k == w.key) {
                Some((_, ws)) => ws.push(w),
                None => by_key.push((w.key.clone(), vec![w])),
            }
        }
        let mut refused = None;
        for (key, writes) in by_key {
            let mark = writes
                .iter()
                .any(|w| w.once)
                .then(|| keys.relayed(&key))
                .flatten();
            let mut script_keys = vec![key.clone()];
            script_keys.extend(mark);
            let mut args = vec![p.index().to_string(), id.clone()];
            let mut named = vec![key.clone()];
            write_args(&writes, 0, &mut named, &mut args);
            let mut call = RELAY.prepare_invoke();
            for k in &script_keys {
                call.key(k);
            }
            for a in &args {
                call.arg(a);
            }
            match call.invoke_async::<redis::Value>(conn).await? {
                redis::Value::Int(1) => done.writes += writes.len(),
                redis::Value::Int(_) => {}
                other => {
                    let why = format!("`{key}` is not the kind of key it writes ({other:?})");
                    refused = Some(why);
                }
            }
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        if let Some(why) = refused {
            done.refused.push((id.clone(), why));
        }
        ids.push(id.clone());
    }
    if replicas > 0 {
        for key in &touched {
            if !conn.wait_replicas(key, replicas, WAIT_TIMEOUT).await? {
                done.unconfirmed = true;
                return Ok(done);
            }
        }
    }
    redis::cmd("XDEL")
        .arg(&outbox)
        .arg(&ids)
        .query_async::<i64>(conn)
        .await?;
    done.entries = ids.len();
    Ok(done)
}
