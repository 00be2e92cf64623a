//! Field values as recipes, and the strategies that make them: lengths
//! around each bound, text of any characters, bytes that are not UTF-8,
//! JSON nested around serde_json's limit and far beyond it.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use sagaflow::protocol::limits::{entry_bytes, MAX_JSON_DEPTH, MAX_NAME_LEN, MAX_REASON_LEN};
use sagaflow::protocol::RawFields;
use serde_json::Value;

/// How to make one field value.
#[derive(Clone, Debug)]
pub enum Bytes {
    /// Short text of any characters, control characters included.
    Text(String),
    /// Short arbitrary bytes, mostly not UTF-8.
    Raw(Vec<u8>),
    /// `len` times the same character: the long values.
    Fill { len: usize, ch: char },
    /// A JSON object `depth` levels deep: `{"a":[[...]]}`.
    Deep { depth: usize },
    /// Valid JSON.
    Json(Value),
}

impl Bytes {
    pub fn make(&self) -> Vec<u8> {
        match self {
            Bytes::Text(s) => s.clone().into_bytes(),
            Bytes::Raw(b) => b.clone(),
            Bytes::Fill { len, ch } => {
                let mut s = String::with_capacity(*len);
                // Whole characters only, so the result stays UTF-8.
                let n = len / ch.len_utf8();
                s.extend(std::iter::repeat_n(*ch, n));
                s.into_bytes()
            }
            Bytes::Deep { depth } => deep_object(*depth).into_bytes(),
            Bytes::Json(v) => v.to_string().into_bytes(),
        }
    }
}

pub fn deep_object(depth: usize) -> String {
    let inner = depth.saturating_sub(1);
    format!(r#"{{"a":{}0{}}}"#, "[".repeat(inner), "]".repeat(inner))
}

/// Depth of nesting of arrays and objects, as serde_json counts it.
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Lengths that matter for a bound: small, and just under, at and just
/// over it.
pub fn len_near(bound: usize) -> impl Strategy<Value = usize> {
    prop_oneof![0..16usize, (bound - 2)..=(bound + 2)]
}

pub fn fill_near(bound: usize) -> impl Strategy<Value = Bytes> {
    (
        len_near(bound),
        prop::sample::select(vec!['x', 'é', '\u{1}', '"']),
    )
        .prop_map(|(len, ch)| Bytes::Fill { len, ch })
}

/// Nesting around serde_json's limit, and far beyond it.
pub fn deep() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        (1..=3usize),
        (MAX_JSON_DEPTH - 1)..=(MAX_JSON_DEPTH + 2),
        Just(100_000usize),
    ]
    .prop_map(|depth| Bytes::Deep { depth })
}

pub fn any_text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// JSON that survives a round trip exactly (no floats that need more
/// digits than their binary value has).
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i32>().prop_map(|n| Value::from(f64::from(n) / 8.0)),
        any_text(12).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map("[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn json_object() -> impl Strategy<Value = Value> {
    btree_map("[a-z]{1,6}", json_value(), 0..6).prop_map(|m| Value::Object(m.into_iter().collect()))
}

pub fn any_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => any_text(16).prop_map(Bytes::Text),
        2 => vec(any::<u8>(), 0..16).prop_map(Bytes::Raw),
        1 => json_value().prop_map(Bytes::Json),
        1 => deep(),
        1 => fill_near(MAX_NAME_LEN),
    ]
}

pub fn name() -> impl Strategy<Value = Bytes> {
    "[a-z_:]{1,20}".prop_map(Bytes::Text)
}

/// Where padding goes to bring an entry to `bound + offset` bytes.
#[derive(Clone, Debug)]
pub struct Pad {
    pub offset: i64,
    /// Into a field of its own, or into the entry's JSON (`payload` of a
    /// start, `result` of a reply).
    pub into_json: bool,
}

pub fn pad() -> impl Strategy<Value = Option<Pad>> {
    prop_oneof![
        3 => Just(None),
        1 => ((-2i64..=2), any::<bool>()).prop_map(|(offset, into_json)| Some(Pad { offset, into_json })),
    ]
}

/// Brings `fields` to `bound + pad.offset` bytes in all: in the field
/// `json_field` as a JSON object or string, or in a field `pad` of its own.
pub fn apply_pad(
    fields: &mut RawFields,
    bound: usize,
    pad: &Pad,
    json_field: &str,
    as_object: bool,
) {
    let target = (bound as i64 + pad.offset) as usize;
    if pad.into_json {
        fields.remove(json_field);
        let rest = entry_bytes(fields) + json_field.len();
        // `{"p":"` + fill + `"}` or `"` + fill + `"`.
        let frame = if as_object { 8 } else { 2 };
        if let Some(n) = target.checked_sub(rest + frame) {
            let fill = "x".repeat(n);
            let text = if as_object {
                format!(r#"{{"p":"{fill}"}}"#)
            } else {
                format!(r#""{fill}""#)
            };
            fields.insert(json_field.to_owned(), text.into_bytes());
        }
    } else {
        let rest = entry_bytes(fields) + "pad".len();
        if let Some(n) = target.checked_sub(rest) {
            fields.insert("pad".to_owned(), vec![b'x'; n]);
        }
    }
}

pub fn is_utf8(fields: &RawFields) -> bool {
    fields.values().all(|v| std::str::from_utf8(v).is_ok())
}

pub fn assert_short(reason: &str) {
    assert!(
        reason.len() <= MAX_REASON_LEN,
        "a reason of {} bytes",
        reason.len()
    );
}
