//! Writing saga transitions to Redis. Everything one transition does (the
//! saga's new state, the commands it sends, its audit events, the
//! acknowledgement of its start entry) is written by one Lua script, so no
//! reader ever sees a command without its recorded state or the reverse.
//!
//! The script is fenced: it writes only if the saga's record still names the
//! writer's owner token, so a daemon that lost its lease (paused, cut off)
//! cannot touch a saga another daemon took over. Each write carries the
//! saga's transition number, so a write retried after a lost answer is not
//! applied twice.
//!
//! The saga record is a hash at `saga:{<saga_id>}`: `owner`, `seq` (the last
//! transition written) and `state` (JSON).

use super::replies::WAKE_FIELD;
use crate::config::Settings;
use crate::protocol::{Command, SagaEvent};
use crate::saga::SagaState;
use redis::aio::ConnectionManager;
use std::sync::LazyLock;

/// The trigger entry a transition acknowledges.
#[derive(Clone, Debug)]
pub struct EntryRef {
    pub stream: String,
    pub id: String,
}

/// Whose saga a transition writes, and where it stands.
pub struct Fence<'a> {
    pub owner: &'a str,
    /// The number of this transition: 1 for the one that creates the saga.
    pub seq: u64,
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
}

/// What became of a fenced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Written before: a retry after an answer that was lost.
    AlreadyDone,
    /// The saga belongs to another owner now (or, for a creation, exists).
    NotOurs,
}

/// The arguments, flat so that nothing is encoded twice: `owner`, `seq`,
/// `saga_id`, `state` (empty: unchanged), `expire` (seconds, 0: none), the
/// owned-set key, `own` (`add`, `remove` or empty), the acknowledgement
/// (stream, group, id; empty stream: none), then the number of `XADD`s, each
/// as its argument count and arguments, then the number of `EXPIRE`s, each
/// as key and seconds.
const SCRIPT: &str = r#"
local owner_arg, seq_arg, saga_id, state = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local record = redis.call('HMGET', KEYS[1], 'owner', 'seq')
local owner, seq = record[1], tonumber(record[2] or '0')
if seq_arg == 1 and not owner then
  redis.call('HSET', KEYS[1], 'owner', owner_arg)
  owner = owner_arg
end
if owner ~= owner_arg then return 0 end
if seq >= seq_arg then return 2 end
if state ~= '' then
  redis.call('HSET', KEYS[1], 'seq', seq_arg, 'state', state)
else
  redis.call('HSET', KEYS[1], 'seq', seq_arg)
end
local expire = tonumber(ARGV[5])
if expire > 0 then redis.call('EXPIRE', KEYS[1], expire) end
if ARGV[7] == 'add' then redis.call('SADD', ARGV[6], saga_id) end
if ARGV[7] == 'remove' then redis.call('SREM', ARGV[6], saga_id) end
local i = 12
for _ = 1, tonumber(ARGV[11]) do
  local n = tonumber(ARGV[i])
  redis.call('XADD', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
for _ = 1, tonumber(ARGV[i]) do
  redis.call('EXPIRE', ARGV[i + 1], ARGV[i + 2])
  i = i + 2
end
if ARGV[8] ~= '' then redis.call('XACK', ARGV[8], ARGV[9], ARGV[10]) end
return 1
"#;

static FENCED_WRITE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// The arguments of one `XADD`.
fn xadd(stream: &str, maxlen: Option<usize>, fields: Vec<(&'static str, String)>) -> Vec<String> {
    let mut args = vec![stream.to_owned()];
    if let Some(maxlen) = maxlen {
        args.extend(["MAXLEN".to_owned(), "~".to_owned(), maxlen.to_string()]);
    }
    args.push("*".to_owned());
    for (k, v) in fields {
        args.push(k.to_owned());
        args.push(v);
    }
    args
}

impl Transition<'_> {
    fn stream_writes(&self, settings: &Settings) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for (stream, command) in &self.commands {
            out.push(xadd(
                stream,
                Some(settings.commands_maxlen),
                command.to_fields(),
            ));
        }
        for event in &self.events {
            out.push(xadd(
                &settings.events_stream,
                Some(settings.events_maxlen),
                event.to_fields(),
            ));
        }
        for (stream, _) in &self.own_reply_streams {
            out.push(xadd(stream, None, vec![(WAKE_FIELD, "1".into())]));
        }
        if !self.own_reply_streams.is_empty() {
            // Wakes the reply reader, blocked on the shared stream, so that
            // it starts reading the new streams now.
            out.push(xadd(
                &settings.reply_stream(),
                None,
                vec![(WAKE_FIELD, "1".into())],
            ));
        }
        out
    }

    /// Writes the transition. A write about no saga is a plain MULTI.
    pub async fn write(
        &self,
        conn: &mut ConnectionManager,
        settings: &Settings,
    ) -> redis::RedisResult<Written> {
        let Some((saga_id, fence)) = &self.saga else {
            return self
                .write_unfenced(conn, settings)
                .await
                .map(|()| Written::Done);
        };
        let terminal = self.state.is_some_and(|s| s.phase.is_terminal());
        let state = self
            .state
            .map(|s| serde_json::to_string(s).expect("saga state serializes"));
        // The set of sagas this owner drives, for takeover: a saga that
        // ends in its first transition never joins it.
        let own = match (fence.seq == 1, terminal) {
            (true, false) => "add",
            (false, true) => "remove",
            _ => "",
        };
        let (ack_stream, ack_id) = self.ack.map_or(("", ""), |a| (&a.stream[..], &a.id[..]));
        let writes = self.stream_writes(settings);
        let mut call = FENCED_WRITE.key(settings.saga_key(saga_id));
        call.arg(fence.owner)
            .arg(fence.seq)
            .arg(saga_id)
            .arg(state.as_deref().unwrap_or(""))
            .arg(if terminal {
                settings.retention.as_secs().max(1)
            } else {
                0
            })
            .arg(settings.owned_key(fence.owner))
            .arg(own)
            .arg(ack_stream)
            .arg(&settings.trigger_group)
            .arg(ack_id)
            .arg(writes.len());
        for args in &writes {
            call.arg(args.len()).arg(args);
        }
        call.arg(self.own_reply_streams.len());
        for (stream, ttl) in &self.own_reply_streams {
            call.arg(stream).arg(ttl);
        }
        let code: i64 = call.invoke_async(conn).await?;
        Ok(match code {
            1 => Written::Done,
            2 => Written::AlreadyDone,
            _ => Written::NotOurs,
        })
    }

    async fn write_unfenced(
        &self,
        conn: &mut ConnectionManager,
        settings: &Settings,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for args in self.stream_writes(settings) {
            pipe.cmd("XADD").arg(args).ignore();
        }
        if let Some(ack) = self.ack {
            pipe.cmd("XACK")
                .arg(&ack.stream)
                .arg(&settings.trigger_group)
                .arg(&ack.id)
                .ignore();
        }
        pipe.query_async::<()>(conn).await
    }
}
