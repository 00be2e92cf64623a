//! Writing one saga transition to Redis: the saga's record, the commands
//! it sends, its audit events and the acknowledgement of the start entry,
//! all in one MULTI/EXEC, so that no reader ever sees a command without
//! its recorded state or the reverse.

use super::replies::WAKE_FIELD;
use crate::config::Settings;
use crate::protocol::{Command, SagaEvent};
use crate::saga::SagaState;
use redis::aio::ConnectionManager;
use redis::Pipeline;

/// The trigger entry a transition acknowledges.
#[derive(Clone, Debug)]
pub struct EntryRef {
    pub stream: String,
    pub id: String,
}

/// Everything one transition writes.
#[derive(Default)]
pub struct Transition<'a> {
    pub state: Option<&'a SagaState>,
    pub commands: Vec<(&'a str, &'a Command)>,
    pub events: Vec<&'a SagaEvent>,
    pub ack: Option<&'a EntryRef>,
    /// Per-request reply streams to create, with their time to live in
    /// seconds: created by us, they carry a TTL that the handlers' `XADD`s
    /// keep, so they go away by themselves.
    pub own_reply_streams: Vec<(&'a str, u64)>,
}

impl Transition<'_> {
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.commands.is_empty()
            && self.events.is_empty()
            && self.ack.is_none()
    }

    fn pipeline(&self, settings: &Settings) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(state) = self.state {
            let key = settings.saga_key(state.saga_id.as_str());
            let json = serde_json::to_string(state).expect("saga state serializes");
            let set = pipe.cmd("SET").arg(&key).arg(json);
            if state.phase.is_terminal() {
                set.arg("EX").arg(settings.retention.as_secs().max(1));
            }
            set.ignore();
        }
        for (stream, command) in &self.commands {
            let xadd = pipe.cmd("XADD").arg(*stream).arg("*");
            for (k, v) in command.to_fields() {
                xadd.arg(k).arg(v);
            }
            xadd.ignore();
        }
        for event in &self.events {
            let xadd = pipe
                .cmd("XADD")
                .arg(&settings.events_stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(settings.events_maxlen)
                .arg("*");
            for (k, v) in event.to_fields() {
                xadd.arg(k).arg(v);
            }
            xadd.ignore();
        }
        for (stream, ttl) in &self.own_reply_streams {
            pipe.cmd("XADD")
                .arg(*stream)
                .arg("*")
                .arg(WAKE_FIELD)
                .arg("1")
                .ignore();
            pipe.cmd("EXPIRE").arg(*stream).arg(*ttl).ignore();
        }
        if !self.own_reply_streams.is_empty() {
            // Wakes the reply reader, blocked on the shared stream, so that
            // it starts reading the new streams now.
            pipe.cmd("XADD")
                .arg(settings.reply_stream())
                .arg("*")
                .arg(WAKE_FIELD)
                .arg("1")
                .ignore();
        }
        if let Some(ack) = self.ack {
            pipe.cmd("XACK")
                .arg(&ack.stream)
                .arg(&settings.trigger_group)
                .arg(&ack.id)
                .ignore();
        }
        pipe
    }

    /// Writes the transition atomically.
    pub async fn write(
        &self,
        conn: &mut ConnectionManager,
        settings: &Settings,
    ) -> redis::RedisResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.pipeline(settings).query_async::<()>(conn).await
    }
}
