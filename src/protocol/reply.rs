//! Replies: the stages a handler writes to a command's `reply_stream`, in
//! the contract's form or the original Python handlers' form.

use super::fields as f;
use super::limits::{
    bounded_reason, check_shape, entry_bytes, json_len, parse_bounded_json, parse_json, quote,
    too_large, truncate_text, ShapeError, MAX_ERROR_LEN, MAX_NAME_LEN, MAX_PROGRESS_DETAILS_BYTES,
    MAX_REPLY_ENTRY_BYTES, MAX_STORED_JSON_BYTES,
};
use super::{text_field, CorrelationId, RawFields, RequestId, SagaId, TraceParent, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a reply says about its exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ReplyStatus {
    /// The handler took the command.
    Start,
    /// The handler is still at work (sagaflow's addition): keeps the
    /// attempt's `heartbeat_timeout` from running out, writes no event.
    Heartbeat,
    /// Work under way; `percent` is 0 to 100 when the handler said how far
    /// it got. `details` keeps the rest of a legacy progress payload, when
    /// it is within [`MAX_PROGRESS_DETAILS_BYTES`].
    Progress {
        percent: Option<f64>,
        details: Value,
    },
    Completed {
        result: Value,
    },
    /// Also what a reply over [`MAX_REPLY_ENTRY_BYTES`] counts as, not
    /// retryable. `error` is at most [`MAX_ERROR_LEN`] bytes.
    Failed {
        error: String,
        retryable: bool,
    },
    /// A reply that claims an exchange but cannot be understood (unknown
    /// `status`, `result` that is not JSON). For the awaited request it
    /// counts as a retryable failure with this reason.
    Unreadable {
        reason: String,
    },
}

impl ReplyStatus {
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            ReplyStatus::Start | ReplyStatus::Heartbeat | ReplyStatus::Progress { .. }
        )
    }
}

/// One reply, parsed once at the edge. Serializable so that a saga set
/// aside with a reply it could not record keeps that reply in its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub saga_id: Option<SagaId>,
    /// Absent in the original handlers' replies: such a reply is matched to
    /// the saga's outstanding command by `event_type`.
    pub request_id: Option<RequestId>,
    /// Left out when it is not 1 to [`MAX_NAME_LEN`] printable ASCII
    /// characters, the form of every command name.
    pub event_type: Option<String>,
    /// Left out when it is not a valid correlation id.
    pub correlation_id: Option<String>,
    pub traceparent: Option<TraceParent>,
    pub status: ReplyStatus,
    /// The handler's clock, in ms (the original handlers write seconds).
    pub timestamp_ms: Option<UnixMillis>,
    /// When the reply reached Redis, on Redis's clock (its entry id), when
    /// the reader knows it: a final reply that reached Redis after its
    /// attempt's deadline is late, whenever it is read.
    #[serde(default)]
    pub reached_ms: Option<UnixMillis>,
}

/// Unix timestamps below this are read as seconds: 10^11 ms is March 1973,
/// 10^11 s is the year 5138.
const SECONDS_LIMIT: u64 = 100_000_000_000;

/// Reads a `timestamp` in ms, or in seconds as the original handlers write it.
pub fn parse_timestamp(s: &str) -> Option<UnixMillis> {
    let value: f64 = s.trim().parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some(if value < SECONDS_LIMIT as f64 {
        (value * 1000.0) as u64
    } else {
        value as u64
    })
}

impl Reply {
    /// Parses a reply entry. `Err` means the entry cannot be tied to any
    /// exchange (no usable `saga_id` nor `request_id`, fields that are not
    /// UTF-8): it is stray and must be skipped. Its reason is at most
    /// [`super::limits::MAX_REASON_LEN`] bytes.
    pub fn from_fields(fields: &RawFields) -> Result<Self, String> {
        Self::read(fields).map_err(bounded_reason)
    }

    fn read(fields: &RawFields) -> Result<Self, String> {
        let saga_id = match text_field(fields, f::SAGA_ID)? {
            Some(s) if !s.is_empty() => Some(
                SagaId::parse(s)
                    .ok_or_else(|| format!("saga_id `{}` is not 32 lowercase hex", quote(s)))?,
            ),
            _ => None,
        };
        let request_id = match text_field(fields, f::REQUEST_ID)? {
            Some(s) if !s.is_empty() => Some(
                RequestId::parse(s)
                    .ok_or_else(|| format!("request_id `{}` is not 32 lowercase hex", quote(s)))?,
            ),
            _ => None,
        };
        if saga_id.is_none() && request_id.is_none() {
            return Err("reply has neither saga_id nor request_id".into());
        }
        // An oversized reply is not read further, but it still answers its
        // exchange: the attempt fails, for good, since trying again would
        // bring the same reply.
        let size = entry_bytes(fields);
        let status = if size > MAX_REPLY_ENTRY_BYTES {
            ReplyStatus::Failed {
                error: too_large("reply", size, MAX_REPLY_ENTRY_BYTES),
                retryable: false,
            }
        } else {
            match read_status(fields)? {
                ReplyStatus::Unreadable { reason } => ReplyStatus::Unreadable {
                    reason: bounded_reason(reason),
                },
                // As stored, a result may take more than its text did.
                ReplyStatus::Completed { result } if json_len(&result) > MAX_STORED_JSON_BYTES => {
                    ReplyStatus::Failed {
                        error: too_large(
                            "result as stored",
                            json_len(&result),
                            MAX_STORED_JSON_BYTES,
                        ),
                        retryable: false,
                    }
                }
                status => status,
            }
        };
        Ok(Self {
            saga_id,
            request_id,
            event_type: text_field(fields, f::EVENT_TYPE)?
                .filter(|s| is_name(s))
                .map(str::to_owned),
            correlation_id: text_field(fields, f::CORRELATION_ID)?
                .and_then(|s| CorrelationId::parse(s).ok())
                .map(|id| id.as_str().to_owned()),
            traceparent: text_field(fields, f::TRACEPARENT)?.and_then(TraceParent::parse),
            status,
            timestamp_ms: text_field(fields, f::TIMESTAMP)?.and_then(parse_timestamp),
            reached_ms: None,
        })
    }
}

impl Reply {
    /// The reply of an entry that was over the size limit when it was read,
    /// of which Redis returned only the short identifying fields (see
    /// `store::read`). It answers its exchange as [`Reply::from_fields`]
    /// answers an oversized entry: a failure that retrying cannot mend.
    pub fn oversized(fields: &RawFields, size: usize) -> Result<Self, String> {
        let mut reply = Self::from_fields(fields)?;
        reply.status = ReplyStatus::Failed {
            error: too_large("reply", size, MAX_REPLY_ENTRY_BYTES),
            retryable: false,
        };
        Ok(reply)
    }
}

/// The form of a command name: only such an `event_type` can match one.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// An error text as kept: cut to [`MAX_ERROR_LEN`].
fn error_text(s: &str) -> String {
    truncate_text(s, MAX_ERROR_LEN).into_owned()
}

/// The legacy `payload` field as JSON: `Ok(None)` when absent.
fn legacy_payload(fields: &RawFields) -> Result<Option<Value>, String> {
    match text_field(fields, f::PAYLOAD)? {
        None => Ok(None),
        Some(text) => parse_bounded_json(text)
            .map(Some)
            .map_err(|e| format!("payload is not JSON: {e}")),
    }
}

fn read_status(fields: &RawFields) -> Result<ReplyStatus, String> {
    let Some(status) = text_field(fields, f::STATUS)? else {
        return Ok(ReplyStatus::Unreadable {
            reason: "reply has no status".into(),
        });
    };
    Ok(match status {
        "start" => ReplyStatus::Start,
        "heartbeat" => ReplyStatus::Heartbeat,
        "progress" => read_progress(fields)?,
        "completed" => match text_field(fields, f::RESULT)? {
            Some(text) => match check_shape(text) {
                // It would be refused again: a failure for good, like an
                // oversized reply.
                Err(ShapeError::TooMany(why)) => ReplyStatus::Failed {
                    error: format!("result: {why}"),
                    retryable: false,
                },
                Err(ShapeError::TooDeep(why)) => ReplyStatus::Unreadable {
                    reason: format!("result is not JSON: {why}"),
                },
                Ok(()) => match parse_json(text) {
                    Ok(result) => ReplyStatus::Completed { result },
                    Err(e) => ReplyStatus::Unreadable {
                        reason: format!("result is not JSON: {e}"),
                    },
                },
            },
            None => match legacy_payload(fields) {
                Ok(payload) => ReplyStatus::Completed {
                    result: payload.unwrap_or_else(|| Value::Object(Default::default())),
                },
                Err(reason) => ReplyStatus::Unreadable { reason },
            },
        },
        "failed" => {
            let error = match text_field(fields, f::ERROR)? {
                Some(error) => error_text(error),
                None => legacy_payload(fields)
                    .ok()
                    .flatten()
                    .and_then(|p| p.get("error").map(|e| error_text(&json_text(e))))
                    .unwrap_or_else(|| "handler replied failed without a reason".to_owned()),
            };
            let retryable = text_field(fields, f::RETRYABLE)?
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            ReplyStatus::Failed { error, retryable }
        }
        other => ReplyStatus::Unreadable {
            reason: format!("unknown status `{}`", quote(other)),
        },
    })
}

fn read_progress(fields: &RawFields) -> Result<ReplyStatus, String> {
    if let Some(text) = text_field(fields, f::PROGRESS)? {
        let percent = text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite())
            .map(|p| p.clamp(0.0, 100.0));
        return Ok(ReplyStatus::Progress {
            percent,
            details: Value::Null,
        });
    }
    // The original handlers: {"fraction": 0.5, "stage": "planning"}.
    let mut payload = legacy_payload(fields).ok().flatten().unwrap_or(Value::Null);
    let percent = payload
        .get("fraction")
        .and_then(Value::as_f64)
        .filter(|p| p.is_finite())
        .map(|p| (p * 100.0).clamp(0.0, 100.0));
    if let Some(map) = payload.as_object_mut() {
        map.remove("fraction");
    }
    // Progress is optional: details too large to repeat in an event are
    // dropped, the progress itself is kept.
    if json_len(&payload) > MAX_PROGRESS_DETAILS_BYTES {
        payload = Value::Null;
    }
    Ok(ReplyStatus::Progress {
        percent,
        details: payload,
    })
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Builds the fields of a reply in the contract's form, as a handler writes
/// them: ids copied from the command, the handler's own span context.
///
/// It never writes what the daemon would not keep: an error is cut to
/// [`MAX_ERROR_LEN`], and a reply that would exceed
/// [`MAX_REPLY_ENTRY_BYTES`] is written as the non-retryable failure the
/// daemon would count it as, without the oversized result.
pub fn reply_fields(
    command: &super::Command,
    own_span: &TraceParent,
    status: &ReplyStatus,
    timestamp: UnixMillis,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (f::CORRELATION_ID, command.correlation_id.to_string()),
        (f::SAGA_ID, command.saga_id.to_string()),
        (f::REQUEST_ID, command.request_id.to_string()),
        (f::EVENT_TYPE, command.event_type.clone()),
        (f::TRACEPARENT, own_span.to_string()),
        (f::PARENT_SPAN_ID, own_span.span_id.to_string()),
        (f::TIMESTAMP, timestamp.to_string()),
    ];
    let head = out.len();
    let failed = |out: &mut Vec<_>, error: &str, retryable: bool| {
        out.push((f::STATUS, "failed".into()));
        out.push((f::ERROR, error_text(error)));
        out.push((f::RETRYABLE, retryable.to_string()));
    };
    match status {
        ReplyStatus::Start => out.push((f::STATUS, "start".into())),
        ReplyStatus::Heartbeat => out.push((f::STATUS, "heartbeat".into())),
        ReplyStatus::Progress { percent, .. } => {
            out.push((f::STATUS, "progress".into()));
            out.push((f::PROGRESS, percent.unwrap_or(0.0).to_string()));
        }
        ReplyStatus::Completed { result } => {
            out.push((f::STATUS, "completed".into()));
            out.push((f::RESULT, result.to_string()));
        }
        ReplyStatus::Failed { error, retryable } => failed(&mut out, error, *retryable),
        ReplyStatus::Unreadable { reason } => failed(&mut out, reason, true),
    }
    let size = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_REPLY_ENTRY_BYTES {
        out.truncate(head);
        failed(
            &mut out,
            &too_large("reply", size, MAX_REPLY_ENTRY_BYTES),
            false,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(pairs: &[(&str, &str)]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const SAGA: &str = "0123456789abcdef0123456789abcdef";
    const REQ: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn reads_the_contract_form() {
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("request_id", REQ),
            ("status", "completed"),
            ("result", r#"{"robot_ids":["r1"]}"#),
            ("timestamp", "1800000000000"),
        ]))
        .unwrap();
        assert_eq!(r.request_id.unwrap().as_str(), REQ);
        assert_eq!(
            r.status,
            ReplyStatus::Completed {
                result: json!({"robot_ids": ["r1"]})
            }
        );
        assert_eq!(r.timestamp_ms, Some(1_800_000_000_000));

        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "progress"),
            ("progress", "40"),
        ]))
        .unwrap();
        assert_eq!(
            r.status,
            ReplyStatus::Progress {
                percent: Some(40.0),
                details: Value::Null
            }
        );

        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "failed"),
            ("error", "no robots"),
            ("retryable", "true"),
        ]))
        .unwrap();
        assert_eq!(
            r.status,
            ReplyStatus::Failed {
                error: "no robots".into(),
                retryable: true
            }
        );
        let r = Reply::from_fields(&raw(&[("request_id", REQ), ("status", "failed")])).unwrap();
        assert!(matches!(
            r.status,
            ReplyStatus::Failed {
                retryable: false,
                ..
            }
        ));
    }

    #[test]
    fn reads_the_original_handlers_form() {
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("event_type", "routing:plan"),
            ("status", "progress"),
            ("payload", r#"{"fraction": 0.5, "stage": "planning"}"#),
            ("timestamp", "1754200000"),
        ]))
        .unwrap();
        assert!(r.request_id.is_none());
        assert_eq!(r.event_type.as_deref(), Some("routing:plan"));
        assert_eq!(
            r.status,
            ReplyStatus::Progress {
                percent: Some(50.0),
                details: json!({"stage": "planning"})
            }
        );
        assert_eq!(r.timestamp_ms, Some(1_754_200_000_000));

        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("status", "completed"),
            ("payload", "{}"),
        ]))
        .unwrap();
        assert_eq!(r.status, ReplyStatus::Completed { result: json!({}) });
        let r = Reply::from_fields(&raw(&[("saga_id", SAGA), ("status", "completed")])).unwrap();
        assert_eq!(r.status, ReplyStatus::Completed { result: json!({}) });
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("status", "failed"),
            ("payload", r#"{"error": "lidar offline"}"#),
        ]))
        .unwrap();
        assert_eq!(
            r.status,
            ReplyStatus::Failed {
                error: "lidar offline".into(),
                retryable: false
            }
        );
    }

    #[test]
    fn unreadable_final_replies_are_kept_as_such() {
        let r = Reply::from_fields(&raw(&[("request_id", REQ), ("status", "done")])).unwrap();
        assert!(matches!(r.status, ReplyStatus::Unreadable { .. }));
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "completed"),
            ("result", "{oops"),
        ]))
        .unwrap();
        assert!(matches!(r.status, ReplyStatus::Unreadable { .. }));
        assert!(r.status.is_final());
    }

    #[test]
    fn stray_entries_are_errors() {
        assert!(Reply::from_fields(&raw(&[("status", "completed")])).is_err());
        assert!(Reply::from_fields(&raw(&[
            ("request_id", "not-an-id"),
            ("status", "completed")
        ]))
        .is_err());
        let mut bad = raw(&[("request_id", REQ)]);
        bad.insert("status".into(), vec![0xff, 0xfe]);
        assert!(Reply::from_fields(&bad).is_err());
    }

    #[test]
    fn a_reply_over_the_limit_fails_its_attempt_for_good() {
        let big = format!("\"{}\"", "x".repeat(20_000_000));
        for ids in [
            &[("request_id", REQ)][..],
            &[("saga_id", SAGA), ("event_type", "routing:plan")],
        ] {
            let mut fields = raw(ids);
            fields.insert("status".into(), b"completed".to_vec());
            fields.insert("result".into(), big.clone().into_bytes());
            let r = Reply::from_fields(&fields).unwrap();
            assert_eq!(r.request_id.is_some(), ids.len() == 1);
            let ReplyStatus::Failed { error, retryable } = r.status else {
                panic!("not a failure");
            };
            assert!(!retryable);
            assert!(error.contains("over the limit of 1048576 bytes"), "{error}");
        }
    }

    #[test]
    fn a_long_error_is_cut_not_refused() {
        let long = "e".repeat(100_000);
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "failed"),
            ("error", &long),
        ]))
        .unwrap();
        let ReplyStatus::Failed { error, .. } = r.status else {
            panic!("not a failure");
        };
        assert_eq!(error.len(), MAX_ERROR_LEN);
        assert!(error.starts_with("eeee") && error.ends_with("[cut: 100000 bytes in all]"));
        let payload = format!(r#"{{"error":"{long}"}}"#);
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("status", "failed"),
            ("payload", &payload),
        ]))
        .unwrap();
        assert!(
            matches!(r.status, ReplyStatus::Failed { error, .. } if error.len() == MAX_ERROR_LEN)
        );
    }

    #[test]
    fn large_progress_details_are_dropped() {
        let details = |n: usize| format!(r#"{{"fraction":0.5,"log":"{}"}}"#, "l".repeat(n));
        let progress = |payload: &str| {
            let r = Reply::from_fields(&raw(&[
                ("saga_id", SAGA),
                ("status", "progress"),
                ("payload", payload),
            ]))
            .unwrap();
            let ReplyStatus::Progress { percent, details } = r.status else {
                panic!("not progress");
            };
            assert_eq!(percent, Some(50.0));
            details
        };
        // {"log":"..."} is 10 bytes around the text.
        assert!(progress(&details(MAX_PROGRESS_DETAILS_BYTES - 10)).is_object());
        assert!(progress(&details(MAX_PROGRESS_DETAILS_BYTES - 9)).is_null());
    }

    #[test]
    fn copied_names_out_of_form_are_left_out() {
        let long = "n".repeat(100_000);
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "start"),
            ("event_type", &long),
            ("correlation_id", &long),
        ]))
        .unwrap();
        assert!(r.event_type.is_none() && r.correlation_id.is_none());
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "start"),
            ("event_type", &long[..MAX_NAME_LEN]),
            ("correlation_id", "c-1"),
        ]))
        .unwrap();
        assert_eq!(r.event_type.map(|e| e.len()), Some(MAX_NAME_LEN));
        assert_eq!(r.correlation_id.as_deref(), Some("c-1"));
    }

    #[test]
    fn deeply_nested_results_are_unreadable() {
        let deep = "[".repeat(100_000);
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "completed"),
            ("result", &deep),
        ]))
        .unwrap();
        assert!(
            matches!(r.status, ReplyStatus::Unreadable { reason } if reason.contains("limit of 127 levels"))
        );
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("status", "completed"),
            ("payload", &deep),
        ]))
        .unwrap();
        assert!(matches!(r.status, ReplyStatus::Unreadable { .. }));
        let r = Reply::from_fields(&raw(&[
            ("saga_id", SAGA),
            ("status", "progress"),
            ("payload", &deep),
        ]))
        .unwrap();
        assert!(matches!(
            r.status,
            ReplyStatus::Progress { percent: None, .. }
        ));
    }

    #[test]
    fn a_result_that_grows_when_stored_fails_its_attempt_for_good() {
        // 1e5 is stored as 100000.0.
        let result = format!("[{}1e5]", "1e5,".repeat(250_000));
        let r = Reply::from_fields(&raw(&[
            ("request_id", REQ),
            ("status", "completed"),
            ("result", &result),
        ]))
        .unwrap();
        assert!(matches!(
            r.status,
            ReplyStatus::Failed { error, retryable: false } if error.contains("JSON values")
        ));
    }
}
