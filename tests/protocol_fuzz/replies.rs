//! Replies, in the contract's form, the original handlers' form or none,
//! as the daemon reads them and as the saga rules take them.

use crate::values::*;
use proptest::collection::vec;
use proptest::prelude::*;
use sagaflow::definition::load_str;
use sagaflow::protocol::limits::{
    entry_bytes, json_len, MAX_COMMAND_ENTRY_BYTES, MAX_ERROR_LEN, MAX_JSON_DEPTH, MAX_NAME_LEN,
    MAX_PROGRESS_DETAILS_BYTES, MAX_REPLY_ENTRY_BYTES, MAX_STORED_JSON_BYTES,
};
use sagaflow::protocol::{
    CorrelationId, EventType, RawFields, Reply, ReplyStatus, RequestId, SagaId, SpanId, TraceId,
};
use sagaflow::saga::{apply, start, Effect, Event, IdSource, SagaInit};
use serde_json::Value;
use std::path::Path;

pub const SAGA: &str = "0123456789abcdef0123456789abcdef";
pub const REQ: &str = "fedcba9876543210fedcba9876543210";

#[derive(Clone, Debug)]
pub enum Id {
    Valid,
    Empty,
    Other(Bytes),
}

pub fn id() -> impl Strategy<Value = Option<Id>> {
    prop_oneof![
        2 => Just(None),
        6 => Just(Some(Id::Valid)),
        1 => Just(Some(Id::Empty)),
        1 => any_bytes().prop_map(|b| Some(Id::Other(b))),
    ]
}

#[derive(Clone, Debug)]
pub struct ReplyCase {
    pub saga_id: Option<Id>,
    pub request_id: Option<Id>,
    /// Every other field: a known name with a generated value.
    pub fields: Vec<(&'static str, Bytes)>,
    pub pad: Option<Pad>,
}

pub fn text(s: &str) -> Bytes {
    Bytes::Text(s.to_owned())
}

/// The fields that make what a reply says, in each of the forms a handler
/// may use, or anything at all.
pub fn reply_body() -> impl Strategy<Value = Vec<(&'static str, Bytes)>> {
    let fields = |pairs: Vec<(&'static str, Bytes)>| pairs;
    prop_oneof![
        // The contract's form.
        Just(fields(vec![("status", text("start"))])),
        prop_oneof![(0..=120u32).prop_map(|p| text(&p.to_string())), any_bytes()]
            .prop_map(move |p| fields(vec![("status", text("progress")), ("progress", p)])),
        prop_oneof![json_value().prop_map(Bytes::Json), deep(), any_bytes()]
            .prop_map(move |r| fields(vec![("status", text("completed")), ("result", r)])),
        (
            prop_oneof![fill_near(MAX_ERROR_LEN), any_bytes()],
            prop::sample::select(vec!["true", "false", "1", "no"]),
        )
            .prop_map(move |(e, r)| fields(vec![
                ("status", text("failed")),
                ("error", e),
                ("retryable", text(r)),
            ])),
        // The original handlers' form: details and errors around their
        // bounds in `payload`.
        (
            0.0..1.5f64,
            (MAX_PROGRESS_DETAILS_BYTES - 2)..=(MAX_PROGRESS_DETAILS_BYTES + 2)
        )
            .prop_map(move |(fraction, len)| {
                // {"stage":"..."} is 12 bytes around the text once the
                // fraction is gone.
                let stage = "s".repeat(len - 12);
                let payload = serde_json::json!({"fraction": fraction, "stage": stage});
                fields(vec![
                    ("status", text("progress")),
                    ("payload", Bytes::Json(payload)),
                ])
            }),
        fill_near(MAX_ERROR_LEN).prop_map(move |b| {
            let error = String::from_utf8(b.make()).unwrap();
            let payload = serde_json::json!({ "error": error });
            fields(vec![
                ("status", text("failed")),
                ("payload", Bytes::Json(payload)),
            ])
        }),
        prop_oneof![json_value().prop_map(Bytes::Json), deep(), any_bytes()]
            .prop_map(move |p| fields(vec![("status", text("completed")), ("payload", p)])),
        // Anything.
        vec(
            (
                prop::sample::select(vec![
                    "status",
                    "result",
                    "error",
                    "payload",
                    "progress",
                    "retryable",
                ]),
                any_bytes(),
            ),
            0..4,
        ),
    ]
}

pub fn reply_case() -> impl Strategy<Value = ReplyCase> {
    let copied = prop_oneof![name(), fill_near(MAX_NAME_LEN), any_bytes()];
    let others = (
        prop::option::of(copied.clone()),
        prop::option::of(copied),
        prop::option::of(any_bytes()),
        prop::option::of(prop_oneof![any_bytes(), Just(text("1754200000"))]),
    );
    (id(), id(), reply_body(), others, pad()).prop_map(
        |(saga_id, request_id, mut fields, (event_type, correlation, tp, ts), pad)| {
            fields.extend(
                [
                    ("event_type", event_type),
                    ("correlation_id", correlation),
                    ("traceparent", tp),
                    ("timestamp", ts),
                ]
                .into_iter()
                .filter_map(|(name, b)| b.map(|b| (name, b))),
            );
            ReplyCase {
                saga_id,
                request_id,
                fields,
                pad,
            }
        },
    )
}

impl ReplyCase {
    pub fn fields(&self, saga: &str, request: &str) -> RawFields {
        let mut fields = RawFields::new();
        for (name, id, valid) in [
            ("saga_id", &self.saga_id, saga),
            ("request_id", &self.request_id, request),
        ] {
            match id {
                None => {}
                Some(Id::Valid) => {
                    fields.insert(name.into(), valid.as_bytes().to_vec());
                }
                Some(Id::Empty) => {
                    fields.insert(name.into(), Vec::new());
                }
                Some(Id::Other(b)) => {
                    fields.insert(name.into(), b.make());
                }
            }
        }
        for (name, b) in &self.fields {
            fields.insert((*name).into(), b.make());
        }
        if let Some(pad) = &self.pad {
            apply_pad(&mut fields, MAX_REPLY_ENTRY_BYTES, pad, "result", false);
        }
        fields
    }

    /// The entry names an exchange the daemon can find.
    pub fn tied(&self) -> bool {
        let valid = |id: &Option<Id>| matches!(id, Some(Id::Valid));
        let usable = |id: &Option<Id>| matches!(id, None | Some(Id::Valid | Id::Empty));
        (valid(&self.saga_id) || valid(&self.request_id))
            && usable(&self.saga_id)
            && usable(&self.request_id)
    }
}

pub fn check_reply(case: &ReplyCase) {
    let fields = case.fields(SAGA, REQ);
    let size = entry_bytes(&fields);
    match Reply::from_fields(&fields) {
        Err(reason) => {
            assert_short(&reason);
            assert!(
                !case.tied() || !is_utf8(&fields),
                "a reply tied to its exchange was dropped: {reason}"
            );
        }
        Ok(r) => {
            assert!(r.saga_id.is_some() || r.request_id.is_some());
            assert!(r
                .event_type
                .as_ref()
                .is_none_or(|e| e.len() <= MAX_NAME_LEN));
            assert!(r
                .correlation_id
                .as_ref()
                .is_none_or(|c| c.len() <= MAX_NAME_LEN));
            if size > MAX_REPLY_ENTRY_BYTES {
                let ReplyStatus::Failed { error, retryable } = &r.status else {
                    panic!("an oversized reply was read as {:?}", kind(&r.status));
                };
                assert!(!retryable);
                let limit = format!("over the limit of {MAX_REPLY_ENTRY_BYTES} bytes");
                assert!(error.contains(&limit), "{error}");
            }
            check_status(&r.status);
        }
    }
    if size > MAX_REPLY_ENTRY_BYTES && case.tied() && is_utf8(&fields) {
        assert!(Reply::from_fields(&fields).is_ok());
    }
}

pub fn kind(status: &ReplyStatus) -> &'static str {
    match status {
        ReplyStatus::Start => "start",
        ReplyStatus::Heartbeat => "heartbeat",
        ReplyStatus::Progress { .. } => "progress",
        ReplyStatus::Completed { .. } => "completed",
        ReplyStatus::Failed { .. } => "failed",
        ReplyStatus::Unreadable { .. } => "unreadable",
    }
}

pub fn check_status(status: &ReplyStatus) {
    match status {
        ReplyStatus::Start | ReplyStatus::Heartbeat => {}
        ReplyStatus::Progress { percent, details } => {
            assert!(percent.is_none_or(|p| (0.0..=100.0).contains(&p)));
            assert!(json_len(details) <= MAX_PROGRESS_DETAILS_BYTES);
        }
        ReplyStatus::Completed { result } => {
            assert!(json_len(result) <= MAX_STORED_JSON_BYTES);
            assert!(depth(result) <= MAX_JSON_DEPTH);
        }
        ReplyStatus::Failed { error, .. } => assert!(error.len() <= MAX_ERROR_LEN),
        ReplyStatus::Unreadable { reason } => assert_short(reason),
    }
}

// Through the saga rules.

pub const DEF: &str = "\
name: fuzz
steps:
  - name: first
    stream: a:commands
    timeout: 1s
    retry: { max_attempts: 2, initial_delay: 10ms }
    compensation: { command: undo_first }
  - name: second
    stream: b:commands
";

pub struct SeqIds(u64);

impl IdSource for SeqIds {
    fn request_id(&mut self) -> RequestId {
        self.0 += 1;
        RequestId::parse(&format!("{:032x}", self.0)).unwrap()
    }
    fn span_id(&mut self) -> SpanId {
        self.0 += 1;
        SpanId::parse(&format!("{:016x}", self.0)).unwrap()
    }
}

/// The reply, as the awaited one, moves a saga on; every event it causes,
/// and the command it may send, stays within the bounds.
pub fn check_events(case: &ReplyCase) {
    let def = load_str(Path::new("fuzz.yaml"), DEF).unwrap();
    let mut ids = SeqIds(0);
    let init = SagaInit {
        saga_id: SagaId::parse(SAGA).unwrap(),
        correlation_id: CorrelationId::parse("fuzz").unwrap(),
        trace_id: TraceId::generate(),
        parent_span_id: None,
        reply_stream: "saga:replies:fuzz".into(),
        input: serde_json::json!({"area": "a"}),
    };
    let (mut state, started) = start(&def, init, 1_000, &mut ids);
    let awaited = started
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send { command, .. } => Some(command.request_id.clone()),
            _ => None,
        })
        .unwrap();
    let fields = case.fields(SAGA, awaited.as_str());
    let oversized = entry_bytes(&fields) > MAX_REPLY_ENTRY_BYTES;
    let Ok(reply) = Reply::from_fields(&fields) else {
        return;
    };
    let Ok(applied) = apply(&mut state, &def, Event::Reply(reply), 1_001, &mut ids) else {
        return;
    };
    for effect in &applied.effects {
        match effect {
            Effect::Emit(ev) => {
                let p = &ev.payload;
                assert!(json_len(p) <= MAX_STORED_JSON_BYTES + 1024);
                for key in ["error", "reason"] {
                    if let Some(text) = p.get(key).and_then(Value::as_str) {
                        // The rules may add " (after <n> attempts)" or
                        // "unreadable reply: ".
                        assert!(text.len() <= MAX_ERROR_LEN + 64, "{key}: {}", text.len());
                    }
                }
                if let Some(details) = p.get("details") {
                    assert!(json_len(details) <= MAX_PROGRESS_DETAILS_BYTES);
                }
                if oversized {
                    assert_ne!(ev.event_type, EventType::StepRetrying);
                    assert_ne!(ev.event_type, EventType::StepCompleted);
                }
            }
            Effect::Send { command, .. } => {
                let size: usize = command
                    .to_fields()
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                assert!(size <= MAX_COMMAND_ENTRY_BYTES);
            }
            _ => {}
        }
    }
}
