//! Signals: what the outside world tells a saga (an operator approved the
//! route, a robot reported "docked"), written to the signals stream
//! (`saga:signals` by default) and kept for the saga until a `wait` step
//! takes it.
//!
//! An entry has `saga_id`, `signal` (its name), and optionally `signal_id`
//! (what makes a repeat a duplicate; the entry's id when absent),
//! `payload` (JSON, `null` when absent) and `by` (who sent it, as they
//! say: signals are not signed, the stream's ACL decides who may write).

use super::fields as f;
use super::limits::{entry_bytes, parse_bounded_json, quote};
use super::{text_field, RawFields, SagaId, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SIGNAL: &str = "signal";
pub const SIGNAL_ID: &str = "signal_id";
pub const PAYLOAD: &str = "payload";
pub const BY: &str = "by";

/// Largest signal entry, all fields together; a larger one is refused
/// unread.
pub const MAX_SIGNAL_ENTRY_BYTES: usize = 80 << 10;
/// Largest payload, as JSON text.
pub const MAX_SIGNAL_PAYLOAD_BYTES: usize = 64 << 10;
/// Most signals (distinct names) kept for one saga.
pub const MAX_SIGNALS_PER_SAGA: usize = 64;

/// A signal's name, or a wait step's: 1 to 64 letters, digits, `_`, `.`
/// or `-`.
pub fn check_signal_name(name: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
    if name.is_empty() || name.len() > 64 || !name.bytes().all(ok) {
        return Err(format!(
            "signal name `{}` must be 1 to 64 letters, digits, `_`, `.` or `-`",
            quote(name)
        ));
    }
    Ok(())
}

/// A signal id: 1 to 128 printable ASCII characters.
pub fn check_signal_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "signal_id `{}` must be 1 to 128 printable ASCII characters",
            quote(id)
        ));
    }
    Ok(())
}

/// A signal as sent, read from the signals stream.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalRequest {
    pub saga_id: SagaId,
    pub name: String,
    pub signal_id: String,
    pub payload: Value,
    pub by: Option<String>,
}

impl SignalRequest {
    /// Reads an entry of the signals stream; `entry_id` stands for a
    /// missing `signal_id`. The error says what is wrong, and the saga id
    /// when it could be read (for the rejection's event).
    pub fn from_fields(
        fields: &RawFields,
        entry_id: &str,
    ) -> Result<Self, (Option<SagaId>, String)> {
        let saga_id = text_field(fields, f::SAGA_ID)
            .ok()
            .flatten()
            .and_then(SagaId::parse);
        let fail = |why: String| (saga_id.clone(), why);
        let size = entry_bytes(fields);
        if size > MAX_SIGNAL_ENTRY_BYTES {
            return Err(fail(format!(
                "the signal is {size} bytes, more than the limit of {MAX_SIGNAL_ENTRY_BYTES}"
            )));
        }
        let Some(saga) = saga_id.clone() else {
            return Err(fail("`saga_id` is missing or not 32 lowercase hex".into()));
        };
        let name = text_field(fields, SIGNAL).map_err(&fail)?;
        let name = name.ok_or_else(|| fail("`signal` (its name) is missing".into()))?;
        check_signal_name(name).map_err(&fail)?;
        let signal_id = match text_field(fields, SIGNAL_ID).map_err(&fail)? {
            Some(id) if !id.is_empty() => id,
            _ => entry_id,
        };
        check_signal_id(signal_id).map_err(&fail)?;
        let payload = match text_field(fields, PAYLOAD).map_err(&fail)? {
            None | Some("") => Value::Null,
            Some(text) if text.len() > MAX_SIGNAL_PAYLOAD_BYTES => {
                return Err(fail(format!(
                    "the payload is {} bytes, more than the limit of {MAX_SIGNAL_PAYLOAD_BYTES}",
                    text.len()
                )))
            }
            Some(text) => parse_bounded_json(text)
                .map_err(|e| fail(format!("the payload is not JSON: {e}")))?,
        };
        let by = match text_field(fields, BY).map_err(&fail)? {
            None | Some("") => None,
            Some(by) => {
                super::control::check_name("by", by).map_err(&fail)?;
                Some(by.to_owned())
            }
        };
        Ok(Self {
            saga_id: saga,
            name: name.to_owned(),
            signal_id: signal_id.to_owned(),
            payload,
            by,
        })
    }

    /// The entry's fields, as `sagaflow signal` and the HTTP API write it.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (f::SAGA_ID, self.saga_id.to_string()),
            (SIGNAL, self.name.clone()),
            (SIGNAL_ID, self.signal_id.clone()),
            (PAYLOAD, self.payload.to_string()),
        ];
        if let Some(by) = &self.by {
            fields.push((BY, by.clone()));
        }
        fields
    }
}

/// A signal kept for a saga, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptSignal {
    pub name: String,
    pub signal_id: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When it reached the signals stream (its entry id, Redis's clock).
    pub received_ms: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const SAGA: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signal_reads_with_defaults() {
        let s =
            SignalRequest::from_fields(&fields(&[("saga_id", SAGA), ("signal", "docked")]), "1-0")
                .unwrap();
        assert_eq!(s.signal_id, "1-0");
        assert_eq!(s.payload, Value::Null);
        let s = SignalRequest::from_fields(
            &fields(&[
                ("saga_id", SAGA),
                ("signal", "approved"),
                ("signal_id", "a-1"),
                ("payload", r#"{"ok":true}"#),
                ("by", "ana"),
            ]),
            "1-0",
        )
        .unwrap();
        assert_eq!(s.signal_id, "a-1");
        assert_eq!(s.payload["ok"], true);
        assert_eq!(s.by.as_deref(), Some("ana"));
    }

    #[test]
    fn bad_signals_say_why() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("signal", "x")], "saga_id"),
            (&[("saga_id", "nope"), ("signal", "x")], "saga_id"),
            (&[("saga_id", SAGA)], "missing"),
            (&[("saga_id", SAGA), ("signal", "a b")], "signal name"),
            (
                &[("saga_id", SAGA), ("signal", "x"), ("payload", "{")],
                "not JSON",
            ),
            (&[("saga_id", SAGA), ("signal", "x"), ("by", "a b")], "by"),
            (
                &[("saga_id", SAGA), ("signal", "x"), ("signal_id", "a b")],
                "signal_id",
            ),
        ];
        for (pairs, says) in cases {
            let err = SignalRequest::from_fields(&fields(pairs), "1-0")
                .unwrap_err()
                .1;
            assert!(err.contains(says), "{pairs:?}: {err}");
        }
        let big = "1".repeat(MAX_SIGNAL_PAYLOAD_BYTES + 1);
        let err = SignalRequest::from_fields(
            &fields(&[("saga_id", SAGA), ("signal", "x"), ("payload", &big)]),
            "1-0",
        )
        .unwrap_err();
        assert_eq!(err.0.map(|s| s.to_string()).as_deref(), Some(SAGA));
        assert!(err.1.contains("limit"), "{}", err.1);
    }
}
