//! Starts: reserved fields valid or not, the original form with as many
//! input fields as around its bound, names and values around theirs.

use crate::values::*;
use proptest::collection::vec;
use proptest::prelude::*;
use sagaflow::protocol::limits::{
    entry_bytes, json_len, MAX_JSON_DEPTH, MAX_LEGACY_KEY_LEN, MAX_LEGACY_START_FIELDS,
    MAX_NAME_LEN, MAX_START_ENTRY_BYTES, MAX_STORED_JSON_BYTES,
};
use sagaflow::protocol::{RawFields, StartRequest};
use serde_json::Value;

/// A reserved field of a start: valid, or anything.
#[derive(Clone, Debug)]
pub enum Reserved {
    Valid(String),
    Other(Bytes),
}

pub fn reserved(valid: impl Strategy<Value = String>) -> impl Strategy<Value = Option<Reserved>> {
    prop_oneof![
        2 => Just(None),
        3 => valid.prop_map(|s| Some(Reserved::Valid(s))),
        1 => prop_oneof![any_bytes(), fill_near(MAX_NAME_LEN)].prop_map(|b| Some(Reserved::Other(b))),
    ]
}

#[derive(Clone, Debug)]
pub enum Payload {
    Object(Value),
    Deep(usize),
    Other(Bytes),
}

#[derive(Clone, Debug)]
pub struct StartCase {
    pub saga: Option<Reserved>,
    pub correlation_id: Option<Reserved>,
    pub idempotency_key: Option<Reserved>,
    pub traceparent: Option<Bytes>,
    pub payload: Option<Payload>,
    /// How many plain input fields (`f<i>`), and odd ones.
    pub extra: (usize, Vec<(Bytes, Bytes)>),
    pub pad: Option<Pad>,
}

pub fn start_case() -> impl Strategy<Value = StartCase> {
    // Plain input fields, as many as around the bound, and a few odd ones:
    // names around their bound, values of any bytes, and control
    // characters, stored as six bytes each (`\u0001`): around 350,000 of
    // them reach the bound on the input as stored.
    let count = prop_oneof![
        0..8usize,
        (MAX_LEGACY_START_FIELDS - 3)..=(MAX_LEGACY_START_FIELDS + 1)
    ];
    let odd_key = prop_oneof![
        "[a-z]{1,8}".prop_map(Bytes::Text),
        len_near(MAX_LEGACY_KEY_LEN).prop_map(|len| Bytes::Fill { len, ch: 'k' }),
    ];
    let odd_value = prop_oneof![
        4 => any_bytes(),
        1 => (349_000..=350_000usize).prop_map(|len| Bytes::Fill { len, ch: '\u{1}' }),
    ];
    let extra = (count, vec((odd_key, odd_value), 0..3));
    let payload = prop_oneof![
        2 => Just(None),
        3 => json_object().prop_map(|v| Some(Payload::Object(v))),
        1 => prop_oneof![(1..=3usize), (MAX_JSON_DEPTH - 1)..=(MAX_JSON_DEPTH + 1), Just(100_000usize)]
            .prop_map(|d| Some(Payload::Deep(d))),
        1 => any_bytes().prop_map(|b| Some(Payload::Other(b))),
    ];
    (
        reserved("[a-z_]{1,16}"),
        reserved("[a-zA-Z0-9._-]{1,32}"),
        reserved("[a-z0-9-]{1,16}"),
        prop::option::of(any_bytes()),
        payload,
        extra,
        pad(),
    )
        .prop_map(
            |(saga, correlation_id, idempotency_key, traceparent, payload, extra, pad)| StartCase {
                saga,
                correlation_id,
                idempotency_key,
                traceparent,
                payload,
                extra,
                pad,
            },
        )
}

impl StartCase {
    pub fn fields(&self) -> RawFields {
        let mut fields = RawFields::new();
        let reserved = |r: &Reserved| match r {
            Reserved::Valid(s) => s.clone().into_bytes(),
            Reserved::Other(b) => b.make(),
        };
        for (name, r) in [
            ("saga", &self.saga),
            ("correlation_id", &self.correlation_id),
            ("idempotency_key", &self.idempotency_key),
        ] {
            if let Some(r) = r {
                fields.insert(name.into(), reserved(r));
            }
        }
        if let Some(t) = &self.traceparent {
            fields.insert("traceparent".into(), t.make());
        }
        match &self.payload {
            None => {}
            Some(Payload::Object(v)) => {
                fields.insert("payload".into(), v.to_string().into_bytes());
            }
            Some(Payload::Deep(d)) => {
                fields.insert("payload".into(), deep_object(*d).into_bytes());
            }
            Some(Payload::Other(b)) => {
                fields.insert("payload".into(), b.make());
            }
        }
        let (plain, odd) = &self.extra;
        for i in 0..*plain {
            fields.insert(format!("f{i}"), format!("v{i}").into_bytes());
        }
        for (key, value) in odd {
            let key = String::from_utf8(key.make()).unwrap();
            fields.entry(key).or_insert_with(|| value.make());
        }
        if let Some(pad) = &self.pad {
            let as_json = pad.into_json && matches!(self.payload, Some(Payload::Object(_)));
            let pad = Pad {
                into_json: as_json,
                ..pad.clone()
            };
            apply_pad(&mut fields, MAX_START_ENTRY_BYTES, &pad, "payload", true);
        }
        fields
    }

    /// Nothing is wrong with this start but, perhaps, a bound: every
    /// rejection of it must name a limit.
    pub fn clean_but_for_bounds(&self, fields: &RawFields) -> bool {
        let valid = |r: &Option<Reserved>| matches!(r, None | Some(Reserved::Valid(_)));
        valid(&self.saga)
            && valid(&self.correlation_id)
            && valid(&self.idempotency_key)
            && matches!(
                self.payload,
                None | Some(Payload::Object(_) | Payload::Deep(_))
            )
            && is_utf8(fields)
    }
}

pub fn check_start(case: &StartCase) {
    let fields = case.fields();
    let size = entry_bytes(&fields);
    let legacy = !fields.contains_key("payload");
    match StartRequest::from_fields(&fields) {
        Err(e) => {
            assert_short(&e.reason);
            if size > MAX_START_ENTRY_BYTES {
                let limit = format!("over the limit of {MAX_START_ENTRY_BYTES} bytes");
                assert!(e.reason.contains(&limit), "{}", e.reason);
            } else if case.clean_but_for_bounds(&fields) {
                assert!(e.reason.contains("limit"), "{}", e.reason);
            }
        }
        Ok(s) => {
            assert!(size <= MAX_START_ENTRY_BYTES, "accepted {size} bytes");
            assert!(s.input.is_object());
            assert!(json_len(&s.input) <= MAX_STORED_JSON_BYTES);
            assert!(depth(&s.input) <= MAX_JSON_DEPTH);
            assert!(s.correlation_id.as_str().len() <= MAX_NAME_LEN);
            assert!(s.saga.as_ref().is_none_or(|n| n.len() <= MAX_NAME_LEN));
            assert!(s
                .idempotency_key
                .as_ref()
                .is_none_or(|k| k.len() <= MAX_NAME_LEN));
            if legacy {
                let input = s.input.as_object().unwrap();
                assert!(input.len() <= MAX_LEGACY_START_FIELDS);
                assert!(input.keys().all(|k| k.len() <= MAX_LEGACY_KEY_LEN));
            }
        }
    }
}
