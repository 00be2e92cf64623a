//! Saga names paused by operators, and the starts held meanwhile.
//!
//! What is paused is one hash ([`Keys::paused_names`]): name to the pause
//! (who, why, since when). Each trigger stream has, in its own slot, its
//! holds ([`Keys::holds`]): the names whose starts read from it are held
//! (paused ones, and resumed ones whose held starts are still being taken),
//! and for each such name a held stream ([`Keys::held`]). A start read from
//! a trigger stream whose name is held is copied to the held stream and
//! acknowledged on the trigger stream in one script
//! (`scripts/hold_starts.lua`): it never stays pending on the trigger
//! stream, so no delivery of it is counted toward `max_deliveries`, and no
//! daemon's death leaves it to be taken over. Once the name is resumed, the
//! held stream is read through the daemons' group like a trigger stream,
//! oldest first, only while the name stays resumed
//! (`scripts/read_held.lua`); the name leaves the holds once the group has
//! taken every entry (`scripts/hold_release.lua`). Every key one script
//! touches is in its trigger stream's slot, so each works on a cluster.

use super::keys::{slot, Keys};
use super::scripts::{HOLD_RELEASE, HOLD_SET, HOLD_STARTS, READ_HELD};
use crate::connection::Conn;
use crate::streams::{decode_read_reply, Entry};
use redis::aio::ConnectionLike;
use redis::RedisResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The field a held entry begins with: the id the start had on its
/// trigger stream, from which its saga id comes.
pub const HELD_FROM: &str = "sagaflow_held_from";

/// The value of a name in a trigger stream's holds once it is resumed and
/// its held starts are still being taken.
pub const DRAINING: &str = "draining";

/// The most fields a start held may have: starts have at most 64 input
/// fields and five others; one with more is rejected rather than copied
/// (a script cannot write an entry of many thousands of fields at once).
pub const MAX_HELD_FIELDS: usize = 1000;

/// A pause of a saga name, as kept in Redis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamePause {
    /// The operator who paused it (the name of the key that signed it).
    pub by: String,
    pub reason: String,
    /// When, on Redis's clock (unix ms).
    pub since_ms: u64,
    /// The request's nonce: tells one pause of the name from another.
    pub nonce: String,
    /// The trigger streams the daemon that carried the pause out reads:
    /// where the starts held are counted.
    #[serde(default)]
    pub streams: Vec<String>,
}

impl NamePause {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a pause encodes")
    }

    /// A pause as stored; one that cannot be read (written by hand) reads
    /// as a pause by `?`.
    pub fn read(value: &str) -> Self {
        serde_json::from_str(value).unwrap_or(NamePause {
            by: "?".into(),
            reason: value.chars().take(200).collect(),
            since_ms: 0,
            nonce: String::new(),
            streams: Vec::new(),
        })
    }
}

/// The names paused, by name, each pause as stored (JSON): what the holds
/// of each trigger stream are compared with. An operator pauses a handful
/// of names at most.
pub async fn paused_raw<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> RedisResult<BTreeMap<String, String>> {
    redis::cmd("HGETALL")
        .arg(keys.paused_names())
        .query_async(conn)
        .await
}

/// The names paused, by name. A value that cannot be read (written by
/// hand) reads as a pause by `?`: the name is paused all the same.
pub async fn paused_names<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> RedisResult<BTreeMap<String, NamePause>> {
    Ok(paused_raw(conn, keys)
        .await?
        .into_iter()
        .map(|(name, value)| (name, NamePause::read(&value)))
        .collect())
}

/// Records `name` as paused, unless it is already: false then.
pub async fn record_pause<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
    pause: &NamePause,
) -> RedisResult<bool> {
    redis::cmd("HSETNX")
        .arg(keys.paused_names())
        .arg(name)
        .arg(pause.to_json())
        .query_async(conn)
        .await
}

/// Records `name` as no longer paused: the pause it had, as stored
/// (`None` if it was not paused).
pub async fn record_resume<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    name: &str,
) -> RedisResult<Option<String>> {
    let key = keys.paused_names();
    let (pause, _): (Option<String>, i64) = redis::pipe()
        .atomic()
        .cmd("HGET")
        .arg(&key)
        .arg(name)
        .cmd("HDEL")
        .arg(&key)
        .arg(name)
        .query_async(conn)
        .await?;
    Ok(pause)
}

/// A change of a name's entry in a trigger stream's holds.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    /// Hold its starts from now on; the pause as stored (JSON).
    Pause(&'a str),
    /// Take its held starts (if any), then its new ones again.
    Resume,
}

/// What the entry must hold for a change to be made.
#[derive(Clone, Copy, Debug)]
pub enum Expected<'a> {
    /// Whatever it holds: an operator's request.
    Any,
    /// Exactly this (`None`: no entry): a resume, which ends only the
    /// pause it removed, and a daemon mending the holds after a request
    /// half carried out, which must not undo a later one.
    Exactly(Option<&'a str>),
}

/// Whether a trigger stream can hold starts: its name can be paired with
/// another key in its slot (see [`Keys::holds`]).
pub fn can_hold(keys: &Keys, stream: &str) -> bool {
    keys.holds(stream).is_some()
}

/// Changes `name`'s entry in the holds of `stream`, if it is as expected;
/// false if it was not (or the stream cannot hold starts).
pub async fn change_hold<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
    name: &str,
    expected: Expected<'_>,
    change: Change<'_>,
) -> RedisResult<bool> {
    let (Some(holds), Some(held)) = (keys.holds(stream), keys.held(stream, name)) else {
        return Ok(false);
    };
    let expected = match expected {
        Expected::Any => "*".to_owned(),
        Expected::Exactly(value) => value.unwrap_or("").to_owned(),
    };
    let (op, value) = match change {
        Change::Pause(pause) => ("pause", pause.to_owned()),
        Change::Resume => ("resume", String::new()),
    };
    let done: i64 = HOLD_SET
        .key(holds)
        .key(held)
        .arg(name)
        .arg(expected)
        .arg(op)
        .arg(value)
        .invoke_async(conn)
        .await?;
    Ok(done == 1)
}

/// The holds of `stream`: name to its pause (JSON) or [`DRAINING`]. A
/// stream holds a few names at most: those operators paused.
pub async fn holds_of<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
) -> RedisResult<BTreeMap<String, String>> {
    let Some(holds) = keys.holds(stream) else {
        return Ok(BTreeMap::new());
    };
    redis::cmd("HGETALL").arg(holds).query_async(conn).await
}

/// The number of starts of `name` held from `stream` (taken ones included
/// until they are trimmed).
pub async fn held_count<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
    name: &str,
) -> RedisResult<u64> {
    let Some(held) = keys.held(stream, name) else {
        return Ok(0);
    };
    redis::cmd("XLEN").arg(held).query_async(conn).await
}

/// What became of an entry read from a trigger stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sieved {
    /// Its name is not held: start it.
    Take,
    /// Copied to its name's held stream and acknowledged: nothing more to
    /// do with it now.
    Held,
    /// Its name is held, but it has more than [`MAX_HELD_FIELDS`] fields:
    /// to be rejected.
    TooManyFields,
}

/// Holds the entries of `stream` (each its id and the name of the saga it
/// starts, when it names one that can be) whose name is held on the
/// stream; the outcome of each, in order. Entries larger than `max_bytes`
/// are not held (they are rejected for their size when taken).
pub async fn sieve<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    stream: &str,
    group: &str,
    entries: &[(&str, Option<&str>)],
    max_bytes: usize,
) -> RedisResult<Vec<Sieved>> {
    let Some(holds) = keys.holds(stream) else {
        return Ok(vec![Sieved::Take; entries.len()]);
    };
    let mut names: Vec<&str> = Vec::new();
    for (_, name) in entries {
        if let Some(name) = name {
            if !names.contains(name) {
                names.push(name);
            }
        }
    }
    let mut call = HOLD_STARTS.prepare_invoke();
    call.key(stream).key(holds);
    for name in &names {
        call.key(keys.held(stream, name).expect("the stream can hold"));
    }
    call.arg(group)
        .arg(max_bytes)
        .arg(MAX_HELD_FIELDS)
        .arg(names.len());
    for name in &names {
        call.arg(*name);
    }
    for (id, name) in entries {
        let at = name.map_or(0, |n| 1 + names.iter().position(|m| *m == n).unwrap_or(0));
        call.arg(*id).arg(at);
    }
    let outcomes: Vec<String> = call.invoke_async(conn).await?;
    Ok(outcomes
        .iter()
        .map(|o| match o.as_str() {
            "held" => Sieved::Held,
            "many" => Sieved::TooManyFields,
            _ => Sieved::Take,
        })
        .chain(std::iter::repeat(Sieved::Take))
        .take(entries.len())
        .collect())
}

/// A held stream to read: the name's starts held from a trigger stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Held {
    pub trigger: String,
    pub name: String,
    /// The held stream's key.
    pub stream: String,
}

impl Held {
    pub fn new(keys: &Keys, trigger: &str, name: &str) -> Option<Self> {
        Some(Self {
            stream: keys.held(trigger, name)?,
            trigger: trigger.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// New entries of the held streams of `held`, through `group`, at most
/// `count`, each at most `max_bytes` (larger ones as their markers), read
/// without blocking; a held stream whose name is no longer
/// [`DRAINING`] (paused again) is not read. One script per slot.
pub async fn read_held(
    conn: &mut Conn,
    keys: &Keys,
    held: &[Held],
    group: &str,
    consumer: &str,
    count: usize,
    max_bytes: usize,
) -> RedisResult<Vec<Entry>> {
    let mut by_slot: Vec<(u16, Vec<&Held>)> = Vec::new();
    for h in held {
        let at = if conn.is_cluster() {
            slot(&h.stream)
        } else {
            0
        };
        match by_slot.iter_mut().find(|(s, _)| *s == at) {
            Some((_, group)) => group.push(h),
            None => by_slot.push((at, vec![h])),
        }
    }
    let mut entries = Vec::new();
    for (_, slot_held) in by_slot {
        if entries.len() >= count {
            break;
        }
        let mut call = READ_HELD.prepare_invoke();
        for h in &slot_held {
            call.key(
                keys.holds(&h.trigger)
                    .expect("a held stream's trigger can hold"),
            );
            call.key(&h.stream);
        }
        call.arg(group)
            .arg(consumer)
            .arg(count - entries.len())
            .arg(max_bytes);
        for h in &slot_held {
            call.arg(&h.name);
        }
        let reply: redis::Value = call.invoke_async(conn).await?;
        entries.extend(decode_read_reply(&reply));
    }
    Ok(entries)
}

/// Creates `group` on a held stream (at 0) if it is not there: a group
/// lost (deleted by hand) is made again, and its entries read from the
/// first.
pub async fn create_group<C: ConnectionLike + Send>(
    conn: &mut C,
    held: &Held,
    group: &str,
) -> RedisResult<()> {
    super::groups::create(conn, &held.stream, group)
        .await
        .map(|_| ())
}

/// Once `group` has taken every start held, removes the name from the
/// trigger stream's holds (its new starts are taken directly again) and
/// empties the held stream; before that, trims what was taken. True when
/// the name left the holds.
pub async fn release<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    held: &Held,
    group: &str,
) -> RedisResult<bool> {
    let Some(holds) = keys.holds(&held.trigger) else {
        return Ok(false);
    };
    let released: i64 = HOLD_RELEASE
        .key(holds)
        .key(&held.stream)
        .arg(&held.name)
        .arg(group)
        .invoke_async(conn)
        .await?;
    Ok(released == 1)
}

/// The id a held entry had on its trigger stream (its [`HELD_FROM`]);
/// `None` when the entry is gone or has none.
pub async fn held_from<C: ConnectionLike + Send>(
    conn: &mut C,
    held: &str,
    id: &str,
) -> RedisResult<Option<String>> {
    // A held entry is at most the size a start may have.
    let found = crate::streams::range(conn, held, id, id, 1).await?;
    Ok(found.into_iter().next().and_then(|entry| {
        let value = entry.fields.get(HELD_FROM)?;
        String::from_utf8(value.clone()).ok()
    }))
}
