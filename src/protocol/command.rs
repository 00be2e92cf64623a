//! Commands: the entries the daemon writes to a step's command stream.

use super::fields as f;
use super::limits::{
    bounded_reason, entry_bytes, parse_json, too_large, MAX_COMMAND_ENTRY_BYTES, MAX_NAME_LEN,
    MAX_REPLY_STREAM_LEN,
};
use super::{
    text_field, CorrelationId, RawFields, RequestId, SagaId, SpanId, TraceParent, UnixMillis,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether a command does a step's work or undoes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Action,
    Compensation,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Action => "action",
            CommandKind::Compensation => "compensation",
        }
    }
}

/// One command, with every field of the contract.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub correlation_id: CorrelationId,
    pub saga_id: SagaId,
    pub request_id: RequestId,
    /// The daemon's span for this attempt; its span id is `parent_span_id`.
    pub traceparent: TraceParent,
    pub event_type: String,
    pub step: String,
    pub kind: CommandKind,
    pub attempt: u32,
    pub reply_stream: String,
    pub payload: Value,
    pub deadline_ms: UnixMillis,
    pub timestamp: UnixMillis,
    /// Set when the attempt times out without any reply within this many
    /// milliseconds of being sent (its step's `ack_timeout`).
    pub ack_timeout_ms: Option<u64>,
    /// Set when the attempt times out after this many milliseconds without
    /// a reply (its step's `heartbeat_timeout`): a handler sends `progress`
    /// or `heartbeat` replies at least this often while it works.
    pub heartbeat_timeout_ms: Option<u64>,
    /// For a branch of a fan-out step: its position in the step's list.
    pub branch: Option<u32>,
}

impl Command {
    /// The entry's fields, in the contract's order.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (f::CORRELATION_ID, self.correlation_id.to_string()),
            (f::SAGA_ID, self.saga_id.to_string()),
            (f::REQUEST_ID, self.request_id.to_string()),
            (f::TRACEPARENT, self.traceparent.to_string()),
            (f::PARENT_SPAN_ID, self.traceparent.span_id.to_string()),
            (f::EVENT_TYPE, self.event_type.clone()),
            (f::STEP, self.step.clone()),
            (f::KIND, self.kind.as_str().to_owned()),
            (f::ATTEMPT, self.attempt.to_string()),
            (f::REPLY_STREAM, self.reply_stream.clone()),
            (f::PAYLOAD, self.payload.to_string()),
            (f::DEADLINE_MS, self.deadline_ms.to_string()),
            (f::TIMESTAMP, self.timestamp.to_string()),
        ];
        // Only when set: handlers of the contract's first form see the
        // fields they always saw.
        if let Some(ms) = self.ack_timeout_ms {
            fields.push((f::ACK_TIMEOUT_MS, ms.to_string()));
        }
        if let Some(ms) = self.heartbeat_timeout_ms {
            fields.push((f::HEARTBEAT_TIMEOUT_MS, ms.to_string()));
        }
        if let Some(branch) = self.branch {
            fields.push((f::BRANCH, branch.to_string()));
        }
        fields
    }

    /// Reads a command as a handler receives it. Every field is required;
    /// the error names the first one missing, malformed or over its bound,
    /// in at most [`super::limits::MAX_REASON_LEN`] bytes.
    pub fn from_fields(fields: &RawFields) -> Result<Self, String> {
        Self::read(fields).map_err(bounded_reason)
    }

    fn read(fields: &RawFields) -> Result<Self, String> {
        let size = entry_bytes(fields);
        if size > MAX_COMMAND_ENTRY_BYTES {
            return Err(too_large("command", size, MAX_COMMAND_ENTRY_BYTES));
        }
        let text = |name: &str| -> Result<&str, String> {
            text_field(fields, name)?.ok_or_else(|| format!("field `{name}` is missing"))
        };
        // Fields a handler copies into its replies and uses as keys.
        let bounded = |name: &str, limit: usize| -> Result<String, String> {
            let value = text(name)?;
            if value.len() > limit {
                return Err(format!(
                    "field `{name}` is {} bytes long, over the limit of {limit}",
                    value.len()
                ));
            }
            Ok(value.to_owned())
        };
        let number = |name: &str| -> Result<u64, String> {
            text(name)?
                .parse::<u64>()
                .map_err(|_| format!("field `{name}` is not a non-negative integer"))
        };
        // Optional: sent only for steps that set the clock, or for branches.
        let optional_number = |name: &str| -> Result<Option<u64>, String> {
            text_field(fields, name)?
                .map(|t| {
                    t.parse::<u64>()
                        .map_err(|_| format!("field `{name}` is not a non-negative integer"))
                })
                .transpose()
        };
        let traceparent = TraceParent::parse(text(f::TRACEPARENT)?)
            .ok_or_else(|| "field `traceparent` is not valid W3C trace context".to_owned())?;
        let kind = match text(f::KIND)? {
            "action" => CommandKind::Action,
            "compensation" => CommandKind::Compensation,
            other => {
                return Err(format!(
                    "field `kind` is `{}`, expected action or compensation",
                    super::limits::quote(other)
                ))
            }
        };
        let payload = parse_json(text(f::PAYLOAD)?)
            .map_err(|e| format!("field `payload` is not JSON: {e}"))?;
        Ok(Self {
            correlation_id: CorrelationId::parse(text(f::CORRELATION_ID)?)?,
            saga_id: SagaId::parse(text(f::SAGA_ID)?)
                .ok_or("field `saga_id` is not 32 lowercase hex")?,
            request_id: RequestId::parse(text(f::REQUEST_ID)?)
                .ok_or("field `request_id` is not 32 lowercase hex")?,
            traceparent,
            event_type: bounded(f::EVENT_TYPE, MAX_NAME_LEN)?,
            step: bounded(f::STEP, MAX_NAME_LEN)?,
            kind,
            attempt: u32::try_from(number(f::ATTEMPT)?)
                .map_err(|_| "field `attempt` is too large")?,
            reply_stream: bounded(f::REPLY_STREAM, MAX_REPLY_STREAM_LEN)?,
            payload,
            deadline_ms: number(f::DEADLINE_MS)?,
            timestamp: number(f::TIMESTAMP)?,
            ack_timeout_ms: optional_number(f::ACK_TIMEOUT_MS)?,
            heartbeat_timeout_ms: optional_number(f::HEARTBEAT_TIMEOUT_MS)?,
            branch: optional_number(f::BRANCH)?
                .map(u32::try_from)
                .transpose()
                .map_err(|_| "field `branch` is too large")?,
        })
    }

    /// A span id for the handler side to use as its own, child of ours.
    pub fn child_traceparent(&self) -> TraceParent {
        TraceParent::new(self.traceparent.trace_id.clone(), SpanId::generate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TraceId;

    pub(crate) fn sample() -> Command {
        Command {
            correlation_id: CorrelationId::from_trusted("corr-1"),
            saga_id: SagaId::generate(),
            request_id: RequestId::generate(),
            traceparent: TraceParent::new(TraceId::generate(), SpanId::generate()),
            event_type: "allocate_resources".into(),
            step: "allocate_resources".into(),
            kind: CommandKind::Action,
            attempt: 2,
            reply_stream: "saga:replies:x".into(),
            payload: serde_json::json!({"area": "hall-a"}),
            deadline_ms: 1_800_000_000_000,
            timestamp: 1_799_999_990_000,
            ack_timeout_ms: None,
            heartbeat_timeout_ms: None,
            branch: None,
        }
    }

    #[test]
    fn fields_round_trip() {
        let cmd = sample();
        let raw: RawFields = cmd
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect();
        assert_eq!(Command::from_fields(&raw).unwrap(), cmd);
        assert_eq!(
            raw[f::PARENT_SPAN_ID],
            cmd.traceparent.span_id.as_str().as_bytes()
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut raw: RawFields = sample()
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect();
        raw.remove(f::REPLY_STREAM);
        assert_eq!(
            Command::from_fields(&raw).unwrap_err(),
            "field `reply_stream` is missing"
        );
    }

    fn raw_of(cmd: &Command) -> RawFields {
        cmd.to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect()
    }

    #[test]
    fn a_command_over_the_limit_is_refused() {
        let mut cmd = sample();
        cmd.payload = serde_json::json!({"blob": "x".repeat(MAX_COMMAND_ENTRY_BYTES)});
        let err = Command::from_fields(&raw_of(&cmd)).unwrap_err();
        assert!(err.contains("over the limit of 16777216 bytes"), "{err}");
    }

    #[test]
    fn copied_fields_are_bounded() {
        for (field, limit) in [
            (f::EVENT_TYPE, MAX_NAME_LEN),
            (f::STEP, MAX_NAME_LEN),
            (f::REPLY_STREAM, MAX_REPLY_STREAM_LEN),
        ] {
            let mut raw = raw_of(&sample());
            raw.insert(field.into(), vec![b'n'; limit]);
            assert!(Command::from_fields(&raw).is_ok(), "{field}");
            raw.insert(field.into(), vec![b'n'; limit + 1]);
            let err = Command::from_fields(&raw).unwrap_err();
            assert!(
                err.contains(&format!("over the limit of {limit}")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn a_deeply_nested_payload_is_refused() {
        let mut raw = raw_of(&sample());
        raw.insert(f::PAYLOAD.into(), "[".repeat(100_000).into_bytes());
        let err = Command::from_fields(&raw).unwrap_err();
        assert!(err.contains("limit of 127 levels"), "{err}");
    }
}
