//! Human-readable lines for saga events, for `dev`, `start --wait` and `watch`.

use crate::protocol::fields as f;
use crate::protocol::RawFields;
use serde_json::Value;

fn text<'a>(fields: &'a RawFields, name: &str) -> &'a str {
    fields
        .get(name)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn brief(v: &Value, limit: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > limit {
        format!("{}…", s.chars().take(limit).collect::<String>())
    } else {
        s
    }
}

/// One line describing an event entry of `saga:events`, after the time
/// since the saga was started.
pub fn event_line(fields: &RawFields, elapsed_ms: u64) -> String {
    format!(
        "{:>7.3}s  {}",
        elapsed_ms as f64 / 1000.0,
        event_columns(fields)
    )
}

/// The state, event, step and what happened, in columns.
pub fn event_columns(fields: &RawFields) -> String {
    let event = text(fields, f::EVENT_TYPE);
    let step = text(fields, f::STEP);
    let payload: Value = serde_json::from_str(text(fields, f::PAYLOAD)).unwrap_or(Value::Null);
    let attempt = payload.get("attempt").and_then(Value::as_u64).unwrap_or(0);
    let detail = match event {
        "saga_started" => format!(
            "saga {} started, input {}",
            short(text(fields, f::SAGA_ID)),
            brief(&payload["input"], 80)
        ),
        "step_started" | "compensation_started" => format!(
            "{} #{attempt} sent to {} (request {})",
            payload["command"].as_str().unwrap_or(step),
            payload["stream"].as_str().unwrap_or("?"),
            short(payload["request_id"].as_str().unwrap_or(""))
        ),
        "step_progress" | "compensation_progress" => match payload["progress"].as_f64() {
            Some(p) => format!("{p:.0}%"),
            None => "working".to_owned(),
        },
        "step_completed" | "compensation_completed" => {
            format!("done: {}", brief(&payload["result"], 100))
        }
        "step_failed" | "compensation_failed" => format!(
            "failed: {}{}",
            payload["error"].as_str().unwrap_or("?"),
            if payload["retryable"] == Value::Bool(true) {
                " (retryable)"
            } else {
                ""
            }
        ),
        "step_timed_out" | "compensation_timed_out" => format!("attempt {attempt} timed out"),
        "step_retrying" | "compensation_retrying" => {
            format!(
                "attempt {attempt} in {} ms",
                payload["delay_ms"].as_u64().unwrap_or(0)
            )
        }
        "saga_completed" => "every step completed".to_owned(),
        "saga_compensated" => format!(
            "{} failed ({}); undone: {}",
            payload["failed_step"].as_str().unwrap_or("?"),
            payload["reason"].as_str().unwrap_or("?"),
            brief(&payload["compensated"], 100)
        ),
        "saga_failed" => format!(
            "compensation of {} could not complete: {}; an operator is needed",
            payload["compensation"].as_str().unwrap_or("?"),
            payload["error"].as_str().unwrap_or("?")
        ),
        "saga_rejected" => format!("rejected: {}", payload["reason"].as_str().unwrap_or("?")),
        "saga_duplicate" => format!(
            "duplicate of saga {}",
            payload["existing_saga_id"].as_str().unwrap_or("?")
        ),
        _ => brief(&payload, 100),
    };
    format!(
        "{:<12} {:<22} {:<20} {detail}",
        text(fields, f::STATUS),
        event,
        step
    )
}
