//! Starts: the entries a starter writes to a trigger stream.

use super::fields as f;
use super::limits::{
    bounded_reason, entry_bytes, json_len, parse_bounded_json, quote, too_large,
    MAX_LEGACY_KEY_LEN, MAX_LEGACY_START_FIELDS, MAX_NAME_LEN, MAX_START_ENTRY_BYTES,
    MAX_STORED_JSON_BYTES,
};
use super::{text_field, CorrelationId, RawFields, TraceParent};
use serde_json::{Map, Value};

/// A valid start, ready to become a saga.
#[derive(Clone, Debug, PartialEq)]
pub struct StartRequest {
    /// The `saga` field; `None` means the definition bound to the stream.
    pub saga: Option<String>,
    pub input: Value,
    pub correlation_id: CorrelationId,
    /// The caller's span context when it sent a valid one.
    pub traceparent: Option<TraceParent>,
    pub idempotency_key: Option<String>,
}

/// Why a start was refused, with the correlation id when the entry had a
/// usable one, so the rejection can still be found by it.
#[derive(Clone, Debug, PartialEq)]
pub struct StartError {
    pub reason: String,
    pub correlation_id: Option<CorrelationId>,
}

/// Fields that are not input keys on a start without `payload`.
const RESERVED: [&str; 5] = [
    f::SAGA,
    f::PAYLOAD,
    f::CORRELATION_ID,
    f::TRACEPARENT,
    f::IDEMPOTENCY_KEY,
];

fn check_name(what: &str, s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_NAME_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{what} must be 1 to {MAX_NAME_LEN} printable ASCII characters without spaces"
        ));
    }
    Ok(s.to_owned())
}

/// The input of a start in the original starters' form: every field that
/// is not reserved becomes a string key of the input.
fn legacy_input(fields: &RawFields) -> Result<Value, String> {
    let keys: Vec<&String> = (fields.keys())
        .filter(|k| !RESERVED.contains(&k.as_str()))
        .collect();
    if keys.len() > MAX_LEGACY_START_FIELDS {
        return Err(format!(
            "a start without `payload` has {} input fields, over the limit of {MAX_LEGACY_START_FIELDS}",
            keys.len()
        ));
    }
    let mut map = Map::new();
    for key in keys {
        if key.len() > MAX_LEGACY_KEY_LEN {
            return Err(format!(
                "input field `{}` is {} bytes long, over the limit of {MAX_LEGACY_KEY_LEN}",
                quote(key),
                key.len()
            ));
        }
        let value = text_field(fields, key)?.unwrap_or_default();
        map.insert(key.clone(), Value::String(value.to_owned()));
    }
    Ok(Value::Object(map))
}

impl StartRequest {
    pub fn from_fields(fields: &RawFields) -> Result<Self, StartError> {
        // Read the correlation id first so that a rejection can carry it.
        let correlation_id = match text_field(fields, f::CORRELATION_ID) {
            Ok(Some(s)) => Some(CorrelationId::parse(s)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        let valid_correlation = correlation_id.clone().and_then(Result::ok);
        let reject = |reason: String| StartError {
            reason: bounded_reason(reason),
            correlation_id: valid_correlation.clone(),
        };
        // Before anything is copied: the entry as a whole, in either form.
        let size = entry_bytes(fields);
        if size > MAX_START_ENTRY_BYTES {
            return Err(reject(too_large(
                "start entry",
                size,
                MAX_START_ENTRY_BYTES,
            )));
        }
        let correlation_id = match correlation_id {
            Some(Ok(id)) => id,
            Some(Err(e)) => return Err(reject(e)),
            None => CorrelationId::generate(),
        };
        let text = |name: &str| text_field(fields, name).map_err(reject);

        let saga = text(f::SAGA)?
            .map(|s| check_name("saga", s))
            .transpose()
            .map_err(reject)?;
        let idempotency_key = text(f::IDEMPOTENCY_KEY)?
            .map(|s| check_name("idempotency_key", s))
            .transpose()
            .map_err(reject)?;
        let traceparent = text(f::TRACEPARENT)?.and_then(TraceParent::parse);

        let input = match text(f::PAYLOAD)? {
            Some(payload) => {
                let value = parse_bounded_json(payload)
                    .map_err(|e| reject(format!("payload is not valid JSON: {e}")))?;
                if !value.is_object() {
                    return Err(reject("payload must be a JSON object".into()));
                }
                value
            }
            None => legacy_input(fields).map_err(reject)?,
        };
        // As stored, the input may take more than its text did.
        let stored = json_len(&input);
        if stored > MAX_STORED_JSON_BYTES {
            return Err(reject(too_large(
                "input as stored",
                stored,
                MAX_STORED_JSON_BYTES,
            )));
        }
        Ok(Self {
            saga,
            input,
            correlation_id,
            traceparent,
            idempotency_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::limits::MAX_REASON_LEN;
    use serde_json::json;

    fn raw(pairs: &[(&str, &str)]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn reads_a_full_start() {
        let s = StartRequest::from_fields(&raw(&[
            ("saga", "mission_start"),
            ("payload", r#"{"area":"hall-a","robots":2}"#),
            ("correlation_id", "trace-demo-123"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("idempotency_key", "order-7"),
        ]))
        .unwrap();
        assert_eq!(s.saga.as_deref(), Some("mission_start"));
        assert_eq!(s.input, json!({"area": "hall-a", "robots": 2}));
        assert_eq!(s.correlation_id.as_str(), "trace-demo-123");
        assert!(s.traceparent.is_some());
        assert_eq!(s.idempotency_key.as_deref(), Some("order-7"));
    }

    #[test]
    fn top_level_fields_become_the_input() {
        let s = StartRequest::from_fields(&raw(&[("area", "hall-a"), ("robots", "2")])).unwrap();
        assert_eq!(s.input, json!({"area": "hall-a", "robots": "2"}));
        assert!(s.saga.is_none());
        assert_eq!(s.correlation_id.as_str().len(), 32);
    }

    #[test]
    fn an_empty_start_has_an_empty_input() {
        let s = StartRequest::from_fields(&raw(&[])).unwrap();
        assert_eq!(s.input, json!({}));
    }

    #[test]
    fn bad_starts_are_rejected_with_a_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("payload", "{nope")], "not valid JSON"),
            (&[("payload", "[1,2]")], "JSON object"),
            (&[("correlation_id", "")], "empty"),
            (&[("saga", "bad name")], "printable"),
            (&[("idempotency_key", "x\u{7}")], "printable"),
        ];
        for (fields, needle) in cases {
            let err = StartRequest::from_fields(&raw(fields)).unwrap_err();
            assert!(err.reason.contains(needle), "{fields:?}: {}", err.reason);
        }
        let long = "c".repeat(200);
        assert!(StartRequest::from_fields(&raw(&[("correlation_id", &long)])).is_err());
    }

    #[test]
    fn a_rejection_keeps_a_valid_correlation_id() {
        let err =
            StartRequest::from_fields(&raw(&[("correlation_id", "c-1"), ("payload", "nope")]))
                .unwrap_err();
        assert_eq!(err.correlation_id.unwrap().as_str(), "c-1");
    }

    #[test]
    fn non_utf8_fields_are_rejected() {
        let mut fields = raw(&[]);
        fields.insert("area".into(), vec![0xc3, 0x28]);
        let err = StartRequest::from_fields(&fields).unwrap_err();
        assert!(err.reason.contains("UTF-8"));
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        let s = StartRequest::from_fields(&raw(&[("traceparent", "00-abc-def-01")])).unwrap();
        assert!(s.traceparent.is_none());
    }

    #[test]
    fn an_entry_over_the_limit_is_rejected_in_either_form() {
        let big = "x".repeat(2_000_000);
        for name in ["area", "payload", "saga"] {
            let err = StartRequest::from_fields(&raw(&[("correlation_id", "c-1"), (name, &big)]))
                .unwrap_err();
            assert!(
                err.reason.contains("over the limit of 1048576 bytes"),
                "{}",
                err.reason
            );
            assert!(err.reason.len() <= MAX_REASON_LEN);
            assert_eq!(err.correlation_id.unwrap().as_str(), "c-1");
        }
        // Just at the limit, the original form is accepted.
        let value = "x".repeat(MAX_START_ENTRY_BYTES - "area".len());
        let s = StartRequest::from_fields(&raw(&[("area", &value)])).unwrap();
        assert_eq!(s.input["area"].as_str().map(str::len), Some(value.len()));
    }

    #[test]
    fn the_original_form_is_bounded_in_fields_and_key_length() {
        let fields: RawFields = (0..=MAX_LEGACY_START_FIELDS)
            .map(|i| (format!("k{i}"), b"v".to_vec()))
            .collect();
        let err = StartRequest::from_fields(&fields).unwrap_err();
        assert!(
            err.reason.contains("over the limit of 64"),
            "{}",
            err.reason
        );
        let mut fields = fields;
        fields.remove("k0");
        assert!(StartRequest::from_fields(&fields).is_ok());

        let key = "k".repeat(MAX_LEGACY_KEY_LEN + 1);
        let err = StartRequest::from_fields(&raw(&[(&key, "v")])).unwrap_err();
        assert!(
            err.reason.contains("over the limit of 128"),
            "{}",
            err.reason
        );
        assert!(err.reason.len() <= MAX_REASON_LEN);
        let key = "k".repeat(MAX_LEGACY_KEY_LEN);
        assert!(StartRequest::from_fields(&raw(&[(&key, "v")])).is_ok());
    }

    #[test]
    fn a_long_field_name_is_not_echoed() {
        let mut fields = raw(&[]);
        fields.insert("k".repeat(500_000), vec![0xff]);
        let err = StartRequest::from_fields(&fields).unwrap_err();
        assert!(err.reason.len() <= MAX_REASON_LEN, "{}", err.reason.len());
    }

    #[test]
    fn a_deeply_nested_payload_is_rejected() {
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        let err = StartRequest::from_fields(&raw(&[("payload", &deep)])).unwrap_err();
        assert!(err.reason.contains("limit of 127 levels"), "{}", err.reason);
    }

    #[test]
    fn an_input_that_grows_when_stored_is_bounded_as_stored() {
        // Each control character is stored as six: `\u0001`.
        let value = "\u{1}".repeat(500_000);
        let err = StartRequest::from_fields(&raw(&[("area", &value)])).unwrap_err();
        assert!(
            err.reason
                .contains("input as stored is 3000011 bytes, over the limit of 2097152"),
            "{}",
            err.reason
        );
        // Numbers grow too (1e5 is stored as 100000.0), but so many of them
        // break the bound on values first.
        let payload = format!("{{\"n\":[{}1e5]}}", "1e5,".repeat(250_000));
        let err = StartRequest::from_fields(&raw(&[("payload", &payload)])).unwrap_err();
        assert!(err.reason.contains("JSON values"), "{}", err.reason);
    }
}
