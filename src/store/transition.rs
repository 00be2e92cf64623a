//! Writing saga transitions. Everything one transition does (the saga's new
//! state, its place in its partition's indexes and sets, the commands it
//! sends, its audit events, the acknowledgement of its start entry) is
//! written by one script (`scripts/transition.lua`), which checks every key
//! before it writes any: no reader ever sees a command without its recorded
//! state or the reverse, and a key of the wrong kind refuses the whole
//! transition. On a cluster the writes outside the saga's partition are
//! recorded in the partition's outbox by that script and made by the relay
//! ([`super::relay`]), exactly once for commands and events.
//!
//! The write is fenced: it happens only if the saga's record still names the
//! writer's owner token, so a daemon that lost its lease cannot touch a saga
//! another daemon took over. Each write carries the saga's transition
//! number, so a write retried after a lost answer is not applied twice. A
//! transition that makes the writer the saga's driver (its creation, or an
//! operator reopening a failed saga) is refused to an owner fenced off the
//! partition by a claim, and on one Redis also to one whose lease ran out
//! on Redis's clock.
//!
//! The saga record is a hash ([`super::keys::Keys::record`]): `owner`,
//! `seq` (the last transition written), `phase` and `state` (JSON).

use super::keys::Partition;
use super::scripts::TRANSITION;
use crate::config::Settings;
use crate::connection::Conn;
use crate::protocol::{Command, SagaEvent};
use crate::saga::SagaState;

/// The largest transition sent to Redis, all arguments together. A saga's
/// input and each step's result are bounded (1 MiB each, see the protocol
/// docs), so only a saga with dozens of large results comes near it; past
/// it the transition can never be written (Redis would refuse the request
/// and drop the connection every other saga's writes share), and the saga
/// is parked instead.
pub const MAX_TRANSITION_BYTES: usize = 32 << 20;

/// How long a write waits for replicas (`wait_replicas`) before it is
/// retried.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The field of the entries the daemon writes to wake its own reply reader
/// (and to create a per-request reply stream); they are no replies.
pub const WAKE_FIELD: &str = "sagaflow_wake";

/// The trigger entry a transition acknowledges.
#[derive(Clone, Debug)]
pub struct EntryRef {
    pub stream: String,
    pub id: String,
    /// For a start held while its saga name was paused, read from its held
    /// stream (`stream`, `id`): the trigger stream and the entry id it was
    /// written as, from which its saga id comes and which its events name.
    pub written_as: Option<(String, String)>,
}

impl EntryRef {
    /// An entry read where it was written.
    pub fn new(stream: &str, id: &str) -> Self {
        Self {
            stream: stream.to_owned(),
            id: id.to_owned(),
            written_as: None,
        }
    }

    /// The trigger stream and the entry id the start was written as.
    pub fn start(&self) -> (&str, &str) {
        match &self.written_as {
            Some((stream, id)) => (stream, id),
            None => (&self.stream, &self.id),
        }
    }
}

/// What a transition does to the saga's place among the sagas driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The writer drives the saga from now on (it is created, or reopened
    /// from failed): its lease must be alive; the record loses any expiry.
    Join,
    /// The saga has ended: it expires after the retention.
    Leave,
    Stay,
}

/// Whose saga a transition writes, and where it stands.
#[derive(Clone, Copy, Debug)]
pub struct Fence<'a> {
    pub owner: &'a str,
    /// The number of this transition: 1 for the one that creates the saga.
    pub seq: u64,
    pub ownership: Ownership,
}

/// Everything one transition writes.
#[derive(Default)]
pub struct Transition<'a> {
    /// The saga written to; `None` for a write about no saga (a rejected
    /// start), which needs no fence.
    pub saga: Option<(&'a str, Fence<'a>)>,
    pub state: Option<&'a SagaState>,
    pub commands: Vec<(&'a str, &'a Command)>,
    pub events: Vec<&'a SagaEvent>,
    pub ack: Option<&'a EntryRef>,
    /// Per-request reply streams to create, with their time to live in
    /// seconds: created by us, they carry a TTL that the handlers' `XADD`s
    /// keep, so they go away by themselves.
    pub own_reply_streams: Vec<(&'a str, u64)>,
    /// The writer's own reply stream, woken when per-request streams are
    /// created so that its reader starts reading them now.
    pub wake: Option<&'a str>,
    /// The semantic locks the saga lets go of (see [`super::locks`]): it
    /// leaves their queues, holder or waiter.
    pub unlocks: Vec<&'a str>,
}

/// What became of a fenced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Written before: a retry after an answer that was lost.
    AlreadyDone,
    /// The saga belongs to another owner now (or, for a creation, exists).
    NotOurs,
    /// The writer's lease ran out: it may not take the saga; nothing was
    /// written.
    LeaseLost,
}

/// Why a transition was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("`{key}` is not the kind of key the transition writes (someone replaced it)")]
    WrongType { key: String },
    #[error("the transition is {bytes} bytes, the limit is {MAX_TRANSITION_BYTES}")]
    TooLarge { bytes: usize },
    #[error("the saga's state cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl WriteError {
    /// True when trying again cannot help: the write must be given up.
    pub fn is_permanent(&self) -> bool {
        match self {
            WriteError::Redis(e) => crate::streams::is_permanent(e),
            _ => true,
        }
    }
}

/// On a cluster, checks that each of `streams` is a stream or absent, as
/// the transition's script does itself on one Redis: there the script
/// cannot see keys of other slots, and the relay, which finds a key of the
/// wrong kind only after the transition was written, can but drop the
/// write. A key of another kind refuses the transition (`WrongType`), so
/// that a start is rejected and a saga parked as on one Redis. Returns the
/// keys found to be streams.
pub async fn check_streams(conn: &mut Conn, streams: &[String]) -> Result<Vec<String>, WriteError> {
    let mut found = Vec::new();
    for key in streams {
        let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
        match kind.as_str() {
            "stream" => found.push(key.clone()),
            "none" => {}
            _ => return Err(WriteError::WrongType { key: key.clone() }),
        }
    }
    Ok(found)
}

/// One write a transition makes outside its saga's partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Write {
    /// `xadd`, `expire` or `xack` (see `scripts/writes.lua`).
    pub op: String,
    pub key: String,
    /// The arguments after the key.
    pub args: Vec<String>,
    /// Made exactly once when relayed (commands and audit events); the
    /// others are the same done twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub once: bool,
}

fn xadd(
    stream: &str,
    maxlen: Option<usize>,
    fields: Vec<(&'static str, String)>,
    once: bool,
) -> Write {
    let mut args = Vec::new();
    if let Some(maxlen) = maxlen {
        args.extend(["MAXLEN".to_owned(), "~".to_owned(), maxlen.to_string()]);
    }
    args.push("*".to_owned());
    for (k, v) in fields {
        args.push(k.to_owned());
        args.push(v);
    }
    Write {
        op: "xadd".into(),
        key: stream.to_owned(),
        args,
        once,
    }
}

/// The ARGV form of writes (see `scripts/writes.lua`), each naming its key
/// by its position in KEYS: `before` keys, then `keys`, which it adds the
/// key to when new.
pub(super) fn write_args(
    writes: &[Write],
    before: usize,
    keys: &mut Vec<String>,
    args: &mut Vec<String>,
) {
    args.push(writes.len().to_string());
    for w in writes {
        let at = match keys.iter().position(|k| *k == w.key) {
            Some(i) => i,
            None => {
                keys.push(w.key.clone());
                keys.len() - 1
            }
        };
        args.push(w.op.clone());
        args.push((before + at + 1).to_string());
        args.push(w.args.len().to_string());
        args.extend(w.args.iter().cloned());
    }
}

impl Transition<'_> {
    /// The partition the transition is written in: its saga's, or for a
    /// write about no saga, that of the entry it answers.
    pub fn partition(&self) -> Partition {
        match (&self.saga, self.ack) {
            (Some((saga_id, _)), _) => Partition::of(saga_id),
            (None, Some(at)) => Partition::of(&format!("{}\n{}", at.stream, at.id)),
            (None, None) => Partition::of(""),
        }
    }

    fn writes(&self, settings: &Settings) -> Vec<Write> {
        let mut out = Vec::new();
        let keys = super::keys::Keys::of(settings);
        if let Some((saga_id, fence)) = &self.saga {
            for name in &self.unlocks {
                out.push(Write {
                    op: "unlock".into(),
                    key: keys.lock(name),
                    args: vec![(*saga_id).to_owned()],
                    once: false,
                });
            }
            if fence.ownership == Ownership::Leave {
                // The signals kept for the saga go with its record.
                out.push(Write {
                    op: "expire".into(),
                    key: keys.signals(saga_id),
                    args: vec![settings.retention.as_secs().max(1).to_string()],
                    once: false,
                });
            }
        }
        for (stream, command) in &self.commands {
            out.push(xadd(
                stream,
                Some(settings.commands_maxlen),
                command.to_fields(),
                true,
            ));
        }
        for event in &self.events {
            out.push(xadd(
                &settings.events_stream,
                Some(settings.events_maxlen),
                event.to_fields(),
                true,
            ));
        }
        for (stream, ttl) in &self.own_reply_streams {
            out.push(xadd(stream, None, vec![(WAKE_FIELD, "1".into())], false));
            out.push(Write {
                op: "expire".into(),
                key: (*stream).to_owned(),
                args: vec![ttl.to_string()],
                once: false,
            });
        }
        if let (false, Some(wake)) = (self.own_reply_streams.is_empty(), self.wake) {
            // Wakes the reply reader, blocked on the shared stream, so that
            // it starts reading the new streams now.
            out.push(xadd(wake, None, vec![(WAKE_FIELD, "1".into())], false));
        }
        if let Some(at) = self.ack {
            out.push(Write {
                op: "xack".into(),
                key: at.stream.clone(),
                args: vec![settings.trigger_group.clone(), at.id.clone()],
                once: false,
            });
        }
        out
    }

    /// The streams outside the saga's partition that the transition writes
    /// into and whose names are fixed by the catalog and the settings: the
    /// command streams, the audit stream, the trigger stream of the start
    /// it acknowledges. (Its own reply streams are named by the daemon.)
    pub fn shared_streams(&self, settings: &Settings) -> Vec<String> {
        let mut streams: Vec<String> = Vec::new();
        let commands = self.commands.iter().map(|(stream, _)| *stream);
        let events = self.events.first().map(|_| settings.events_stream.as_str());
        let ack = self.ack.map(|at| at.stream.as_str());
        for stream in commands.chain(events).chain(ack) {
            if !streams.iter().any(|s| s == stream) {
                streams.push(stream.to_owned());
            }
        }
        streams
    }

    /// Writes the transition: on one Redis, all of it in one script; on a
    /// cluster, the saga's part and its other writes recorded in its
    /// partition's outbox in one script, the rest left to the relay
    /// ([`super::relay`]), which `Written::Done` then asks for.
    pub async fn write(&self, conn: &mut Conn, settings: &Settings) -> Result<Written, WriteError> {
        let state = self.state.map(serde_json::to_string).transpose()?;
        let writes = self.writes(settings);
        let bytes = state.as_ref().map_or(0, String::len)
            + writes
                .iter()
                .map(|w| w.key.len() + w.args.iter().map(String::len).sum::<usize>())
                .sum::<usize>();
        if bytes > MAX_TRANSITION_BYTES {
            return Err(WriteError::TooLarge { bytes });
        }
        let keys_of = super::keys::Keys::new(&settings.saga_key_prefix);
        let p = self.partition();
        let cluster = conn.is_cluster();
        let (owner, seq, saga_id, ownership) = match &self.saga {
            Some((saga_id, fence)) => {
                let ownership = match fence.ownership {
                    Ownership::Join => "join",
                    Ownership::Leave => "leave",
                    Ownership::Stay => "",
                };
                (fence.owner, fence.seq, *saga_id, ownership)
            }
            None => ("", 0, "", ""),
        };
        let record = if saga_id.is_empty() {
            keys_of.outbox(p)
        } else {
            keys_of.record(saga_id)
        };
        let mut keys = vec![
            record,
            keys_of.owned(p, owner),
            keys_of.owners_in(p),
            keys_of.fenced(p),
            keys_of.outbox(p),
        ];
        keys.extend(keys_of.indexes(p));
        let phase = self.state.map_or("", |s| s.phase.status().as_str());
        let mut args: Vec<String> = vec![
            owner.to_owned(),
            seq.to_string(),
            saga_id.to_owned(),
            state.unwrap_or_default(),
            phase.to_owned(),
            ownership.to_owned(),
            settings.retention.as_secs().max(1).to_string(),
        ];
        if cluster {
            args.push("outbox".into());
            args.push(if writes.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&writes)?
            });
        } else {
            args.push("direct".into());
            args.push(String::new());
            keys.push(keys_of.leases());
            let mut direct_keys = Vec::new();
            write_args(&writes, keys.len(), &mut direct_keys, &mut args);
            keys.extend(direct_keys);
        }
        let mut call = TRANSITION.prepare_invoke();
        for key in &keys {
            call.key(key);
        }
        for arg in &args {
            call.arg(arg);
        }
        let (code, detail): (i64, String) = call.invoke_async(conn).await?;
        if matches!(code, 1 | 2) && settings.wait_replicas > 0 {
            // Nothing acts on a transition (its saga goes on, the relay
            // makes its writes) before a replica holds it: a failover
            // then cannot take it back. Asked again, it is written before.
            let replicas = settings.wait_replicas;
            if !conn.wait_replicas(&keys[0], replicas, REPLICA_WAIT).await? {
                return Err(WriteError::Redis(redis::RedisError::from(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the transition has not reached {replicas} replica(s) yet"),
                    ),
                )));
            }
        }
        match code {
            1 => Ok(Written::Done),
            2 => Ok(Written::AlreadyDone),
            3 => Ok(Written::LeaseLost),
            4 => Err(WriteError::WrongType { key: detail }),
            _ => Ok(Written::NotOurs),
        }
    }
}
