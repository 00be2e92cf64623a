//! Commands as a handler reads them, and the replies it builds for them.

use crate::replies::kind;
use crate::values::*;
use proptest::prelude::*;
use sagaflow::protocol::limits::{
    entry_bytes, json_len, truncate_text, MAX_COMMAND_ENTRY_BYTES, MAX_ERROR_LEN, MAX_JSON_DEPTH,
    MAX_NAME_LEN, MAX_REPLY_ENTRY_BYTES, MAX_REPLY_STREAM_LEN,
};
use sagaflow::protocol::reply::reply_fields;
use sagaflow::protocol::{
    Command, CommandKind, CorrelationId, RawFields, Reply, ReplyStatus, RequestId, SagaId, SpanId,
    TraceId, TraceParent,
};
use serde_json::Value;

/// Commands whose entry is, now and then, just under, at or just over its
/// bound: costly cases (16 MiB each), so rare.
pub fn command_near_its_bound() -> impl Strategy<Value = Command> {
    let offset = prop_oneof![24 => Just(None), 1 => (-2i64..=2).prop_map(Some)];
    (command(), offset).prop_map(|(mut cmd, offset)| {
        if let Some(offset) = offset {
            cmd.payload = Value::from("");
            let rest = entry_bytes(&raw(cmd.to_fields()));
            let target = (MAX_COMMAND_ENTRY_BYTES as i64 + offset) as usize;
            cmd.payload = Value::from("x".repeat(target - rest));
        }
        cmd
    })
}

/// Commands with small payloads, and names around their bounds.
pub fn command() -> impl Strategy<Value = Command> {
    let names = (
        "[a-zA-Z0-9._-]{1,32}",
        prop_oneof![name(), fill_near(MAX_NAME_LEN)],
        prop_oneof![name(), fill_near(MAX_NAME_LEN)],
        prop_oneof![name(), fill_near(MAX_REPLY_STREAM_LEN)],
    );
    (
        names,
        any::<bool>(),
        any::<u32>(),
        json_value(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                (corr, event_type, step, reply_stream),
                compensation,
                attempt,
                payload,
                deadline,
                ts,
            )| {
                let text = |b: Bytes| String::from_utf8(b.make()).unwrap();
                Command {
                    correlation_id: CorrelationId::parse(&corr).unwrap(),
                    saga_id: SagaId::generate(),
                    request_id: RequestId::generate(),
                    traceparent: TraceParent::new(TraceId::generate(), SpanId::generate()),
                    event_type: text(event_type),
                    step: text(step),
                    kind: if compensation {
                        CommandKind::Compensation
                    } else {
                        CommandKind::Action
                    },
                    attempt,
                    reply_stream: text(reply_stream),
                    payload,
                    deadline_ms: deadline,
                    timestamp: ts,
                    // The optional clocks, present or not, from bits of
                    // the values drawn.
                    ack_timeout_ms: (ts % 3 == 0).then_some(deadline / 7),
                    heartbeat_timeout_ms: (deadline % 2 == 0).then_some(ts / 5),
                    branch: (ts % 5 == 0).then_some(attempt),
                }
            },
        )
}

pub fn raw(fields: Vec<(&'static str, String)>) -> RawFields {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect()
}

/// Which bound, if any, a command breaks.
pub fn broken_bound(cmd: &Command, size: usize) -> Option<String> {
    if size > MAX_COMMAND_ENTRY_BYTES {
        return Some(format!("over the limit of {MAX_COMMAND_ENTRY_BYTES} bytes"));
    }
    if cmd.event_type.len() > MAX_NAME_LEN || cmd.step.len() > MAX_NAME_LEN {
        return Some(format!("over the limit of {MAX_NAME_LEN}"));
    }
    if cmd.reply_stream.len() > MAX_REPLY_STREAM_LEN {
        return Some(format!("over the limit of {MAX_REPLY_STREAM_LEN}"));
    }
    None
}

pub fn check_command_round_trip(cmd: &Command) {
    let fields = raw(cmd.to_fields());
    let size = entry_bytes(&fields);
    match (Command::from_fields(&fields), broken_bound(cmd, size)) {
        (Ok(back), None) => assert!(back == *cmd, "the command changed on its way"),
        (Err(e), Some(limit)) => {
            assert_short(&e);
            assert!(e.contains(&limit), "{e} does not say {limit}");
        }
        (Ok(_), Some(limit)) => panic!("accepted a command {limit}"),
        (Err(e), None) => panic!("refused a valid command: {e}"),
    }
}

#[derive(Clone, Debug)]
pub enum Mutation {
    Remove(&'static str),
    Set(&'static str, Bytes),
    Add(String, Bytes),
}

pub const COMMAND_FIELDS: [&str; 13] = [
    "correlation_id",
    "saga_id",
    "request_id",
    "traceparent",
    "parent_span_id",
    "event_type",
    "step",
    "kind",
    "attempt",
    "reply_stream",
    "payload",
    "deadline_ms",
    "timestamp",
];

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let field = prop::sample::select(COMMAND_FIELDS.to_vec());
    prop_oneof![
        field.clone().prop_map(Mutation::Remove),
        (
            field,
            prop_oneof![any_bytes(), deep(), fill_near(MAX_REPLY_STREAM_LEN)]
        )
            .prop_map(|(f, b)| Mutation::Set(f, b)),
        ("[a-z]{1,12}", any_bytes()).prop_map(|(f, b)| Mutation::Add(f, b)),
    ]
}

pub fn check_command_mutated(cmd: &Command, mutations: &[Mutation]) {
    let mut fields = raw(cmd.to_fields());
    for m in mutations {
        match m {
            Mutation::Remove(f) => {
                fields.remove(*f);
            }
            Mutation::Set(f, b) => {
                fields.insert((*f).into(), b.make());
            }
            Mutation::Add(f, b) => {
                fields.insert(f.clone(), b.make());
            }
        }
    }
    match Command::from_fields(&fields) {
        Err(e) => assert_short(&e),
        Ok(c) => {
            assert!(entry_bytes(&fields) <= MAX_COMMAND_ENTRY_BYTES);
            assert!(c.event_type.len() <= MAX_NAME_LEN && c.step.len() <= MAX_NAME_LEN);
            assert!(c.reply_stream.len() <= MAX_REPLY_STREAM_LEN);
            assert!(c.correlation_id.as_str().len() <= MAX_NAME_LEN);
            assert!(depth(&c.payload) <= MAX_JSON_DEPTH);
        }
    }
    // One copied field over its bound, the rest intact: the reason names it.
    if broken_bound(cmd, entry_bytes(&raw(cmd.to_fields()))).is_some() {
        return;
    }
    if let [Mutation::Set(f, Bytes::Fill { len, .. })] = mutations {
        let limit = match *f {
            "event_type" | "step" => MAX_NAME_LEN,
            "reply_stream" => MAX_REPLY_STREAM_LEN,
            _ => return,
        };
        let value = &fields[*f];
        if value.len() > limit && *len > 0 {
            let e = Command::from_fields(&fields).unwrap_err();
            assert!(e.contains(&format!("over the limit of {limit}")), "{e}");
        }
    }
}

// Replies as a handler builds them.

pub fn status() -> impl Strategy<Value = ReplyStatus> {
    prop_oneof![
        3 => Just(ReplyStatus::Start),
        1 => Just(ReplyStatus::Heartbeat),
        3 => (0..=400u32).prop_map(|p| ReplyStatus::Progress {
            percent: Some(f64::from(p) / 4.0),
            details: Value::Null,
        }),
        3 => json_value().prop_map(|result| ReplyStatus::Completed { result }),
        1 => len_near(MAX_REPLY_ENTRY_BYTES - 350).prop_map(|n| ReplyStatus::Completed {
            result: Value::from("r".repeat(n)),
        }),
        3 => (
            prop_oneof![
                any_text(32),
                fill_near(MAX_ERROR_LEN).prop_map(|b| String::from_utf8(b.make()).unwrap())
            ],
            any::<bool>()
        )
            .prop_map(|(error, retryable)| ReplyStatus::Failed { error, retryable }),
        3 => any_text(32).prop_map(|reason| ReplyStatus::Unreadable { reason }),
    ]
}

pub const TS: u64 = 1_800_000_000_000;

pub fn check_built_reply(cmd: &Command, status: &ReplyStatus) {
    let own = cmd.child_traceparent();
    let fields = raw(reply_fields(cmd, &own, status, TS));
    let size = entry_bytes(&fields);
    assert!(
        size <= MAX_REPLY_ENTRY_BYTES,
        "built a reply of {size} bytes"
    );
    let reply = Reply::from_fields(&fields).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.request_id.as_ref(), Some(&cmd.request_id));
    assert_eq!(reply.saga_id.as_ref(), Some(&cmd.saga_id));
    let cut = |s: &str| truncate_text(s, MAX_ERROR_LEN).into_owned();
    let expected = match status {
        ReplyStatus::Progress { percent, .. } => ReplyStatus::Progress {
            percent: *percent,
            details: Value::Null,
        },
        ReplyStatus::Completed { result } => {
            let unbounded: usize = reply_fields(cmd, &own, &ReplyStatus::Start, TS)
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
                + "result".len()
                + json_len(result)
                + "completed".len()
                - "start".len();
            if unbounded > MAX_REPLY_ENTRY_BYTES {
                let ReplyStatus::Failed { error, retryable } = &reply.status else {
                    panic!("an oversized result came back as {}", kind(&reply.status));
                };
                assert!(!retryable && error.contains("over the limit of 1048576 bytes"));
                return;
            }
            status.clone()
        }
        ReplyStatus::Failed { error, retryable } => ReplyStatus::Failed {
            error: cut(error),
            retryable: *retryable,
        },
        ReplyStatus::Unreadable { reason } => ReplyStatus::Failed {
            error: cut(reason),
            retryable: true,
        },
        ReplyStatus::Start => ReplyStatus::Start,
        ReplyStatus::Heartbeat => ReplyStatus::Heartbeat,
    };
    assert!(
        reply.status == expected,
        "{} came back changed",
        kind(status)
    );
}
