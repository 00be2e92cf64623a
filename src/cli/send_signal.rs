//! `sagaflow signal`: sends a signal to a saga (for its `wait` step),
//! written to the signals stream; the daemons' answer is the saga's
//! `signal_received` or `signal_rejected` event naming the entry.

use super::connect;
use super::output::{self, outln, Failure};
use super::run::RedisArgs;
use crate::operator::{self, SignalOutcome};
use crate::protocol::signal::{
    check_signal_id, check_signal_name, SignalRequest, MAX_SIGNAL_ENTRY_BYTES,
    MAX_SIGNAL_PAYLOAD_BYTES,
};
use crate::protocol::{RawFields, SagaId};
use crate::streams;
use clap::Args;
use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long the daemons have to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How long one read of the events stream blocks while waiting.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow signal 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 route_approved --payload '{\"by\": \"ana\"}'
  sagaflow signal 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11 docked --id dock-7 --by robot-2 --no-wait

A saga takes one signal of a name, kept for it until its `wait` step for that
name takes it (a signal sent before the saga reaches the step waits for it).
The same signal sent again with the same --id is a duplicate and changes
nothing; another signal of that name (another id) is refused. Without --id, a
new id is made and printed: give it to send the same signal again safely.
Signals are not signed: who may send them is decided by who may write to the
signals stream (`sagaflow acl`, role `signaller`).

Exit codes: 0 kept, or a duplicate of a signal kept (with --no-wait: written);
1 refused by the daemon (no such saga, the saga is not running, another signal
of that name was kept, ...) or a bad configuration file; 2 a usage error: a
bad saga id, name, id, `by`, or a payload that is not JSON or is too large
(nothing is written); 3 Redis cannot be reached, or no daemon answered within
10s (the signal stays on the stream, and is kept when a daemon reads it).")]
pub struct SignalArgs {
    /// The saga: its whole id (32 hex digits; dashes and case ignored).
    #[arg(value_parser = parse_saga_id)]
    saga_id: SagaId,
    /// The signal's name, as the `wait` step names it (`signal:`): 1 to 64
    /// letters, digits, `_`, `.` or `-`.
    #[arg(value_parser = parse_name)]
    name: String,
    /// The signal's payload, the wait step's result: JSON (any value), or
    /// @FILE to read it from a file; at most 64 KiB [default: null].
    #[arg(long, value_parser = parse_payload)]
    payload: Option<serde_json::Value>,
    /// What makes a repeat a duplicate: 1 to 128 printable ASCII characters
    /// [default: a new id, printed].
    #[arg(long = "id", value_parser = parse_id)]
    signal_id: Option<String>,
    /// Who sends it, as recorded with it (not proven: signals are not
    /// signed): 1 to 64 letters, digits, `.`, `_`, `@` or `-`.
    #[arg(long, value_parser = parse_by)]
    by: Option<String>,
    /// Return once the signal is written, without waiting for a daemon.
    #[arg(long)]
    no_wait: bool,
    /// Print the daemon's answer (its event) as one JSON line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    redis: RedisArgs,
}

fn parse_saga_id(text: &str) -> Result<SagaId, String> {
    let id: String = (text.chars())
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    SagaId::parse(&id).ok_or_else(|| {
        format!(
            "`{}` is not a saga id: 32 hex digits (`sagaflow list` shows them)",
            text.chars().take(64).collect::<String>()
        )
    })
}

fn parse_name(text: &str) -> Result<String, String> {
    check_signal_name(text).map(|()| text.to_owned())
}

fn parse_id(text: &str) -> Result<String, String> {
    check_signal_id(text).map(|()| text.to_owned())
}

fn parse_by(text: &str) -> Result<String, String> {
    crate::protocol::control::check_name("by", text).map(|()| text.to_owned())
}

/// JSON text, or `@FILE`; read no further than the limit.
fn parse_payload(flag: &str) -> Result<serde_json::Value, String> {
    let too_large =
        |n: usize| format!("{n} bytes or more, the limit is {MAX_SIGNAL_PAYLOAD_BYTES}");
    let text = match flag.strip_prefix('@') {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot read the payload file {path}: {e}"))?;
            let mut text = String::new();
            let limit = MAX_SIGNAL_PAYLOAD_BYTES as u64 + 1;
            file.take(limit)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the payload file {path}: {e}"))?;
            text
        }
        None => flag.to_owned(),
    };
    if text.len() > MAX_SIGNAL_PAYLOAD_BYTES {
        return Err(too_large(text.len()));
    }
    let value =
        crate::protocol::limits::parse_bounded_json(&text).map_err(|e| format!("not JSON: {e}"))?;
    // As written (compact), it must be within the limit too.
    let written = value.to_string().len();
    if written > MAX_SIGNAL_PAYLOAD_BYTES {
        return Err(too_large(written));
    }
    Ok(value)
}

pub async fn run(args: SignalArgs) -> ExitCode {
    output::exit("signal", send(args).await)
}

async fn send(args: SignalArgs) -> Result<ExitCode, Failure> {
    let settings = args.redis.settings().map_err(Failure::no)?;
    let request = SignalRequest {
        saga_id: args.saga_id,
        name: args.name,
        signal_id: (args.signal_id).unwrap_or_else(crate::protocol::ids::new_uuid_hex),
        payload: args.payload.unwrap_or(serde_json::Value::Null),
        by: args.by,
    };
    check(&request).map_err(Failure::usage)?;
    let (client, mut conn) = connect(&settings).await?;
    let saga_id = request.saga_id.to_string();
    let from = streams::last_id(&mut conn, &settings.events_stream)
        .await
        .map_err(|e| format!("cannot read {}: {e}", settings.events_stream))?;
    let entry_id = operator::signal(&mut conn, &settings, &request).await?;
    let named = format!(
        "signal `{}` (signal_id {})",
        request.name, request.signal_id
    );
    if args.no_wait {
        if args.json {
            output::json_line(&serde_json::json!({
                "saga_id": saga_id,
                "signal": request.name,
                "signal_id": request.signal_id,
                "entry_id": entry_id,
                "written": true,
            }));
        } else {
            outln!("{named} written for saga {saga_id} (entry {entry_id})");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut reader = client
        .blocking(POLL)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let asked = Instant::now();
    let mut after = from;
    let (answer_entry, outcome) = loop {
        if asked.elapsed() >= ANSWER_WITHIN {
            return Err(Failure::unavailable(format!(
                "no daemon answered within {}s: is one running? The signal stays on {} \
                 (entry {entry_id}) and is kept when a daemon reads it",
                ANSWER_WITHIN.as_secs(),
                settings.signals_stream
            )));
        }
        let stream = &settings.events_stream;
        let entries = streams::read_after(&mut reader, stream, &after, None, POLL)
            .await
            .map_err(|e| format!("reading {stream} failed: {e}"))?;
        let found = entries.into_iter().find_map(|e| {
            after = e.id.clone();
            operator::signal_answer(&e, &entry_id).map(|outcome| (e, outcome))
        });
        if let Some(found) = found {
            break found;
        }
    };
    if args.json {
        output::json_line(&super::render::event_json(
            &answer_entry.id,
            &answer_entry.fields,
        ));
    }
    let by = (request.by.as_ref()).map_or_else(String::new, |by| format!(" from {by}"));
    match outcome {
        SignalOutcome::Kept => {
            if !args.json {
                outln!("{named}{by} kept for saga {saga_id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        SignalOutcome::Duplicate => {
            if !args.json {
                outln!("{named} was kept for saga {saga_id} before: a duplicate, nothing changed");
            }
            Ok(ExitCode::SUCCESS)
        }
        SignalOutcome::Rejected(why) => {
            if !args.json {
                outln!("refused: {why}");
            }
            Ok(ExitCode::from(output::NO))
        }
    }
}

/// The daemons' own reading of the entry, so that nothing is written that
/// they would refuse for its form.
fn check(request: &SignalRequest) -> Result<(), String> {
    let fields: RawFields = (request.to_fields().into_iter())
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_SIGNAL_ENTRY_BYTES {
        return Err(format!(
            "the signal is {size} bytes, the limit is {MAX_SIGNAL_ENTRY_BYTES}"
        ));
    }
    SignalRequest::from_fields(&fields, "0-1")
        .map(|_| ())
        .map_err(|(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        assert!(parse_saga_id("0123456789ABCDEF-0123456789abcdef").is_ok());
        assert!(parse_saga_id("0123").unwrap_err().contains("32 hex"));
        assert!(parse_name("a b").unwrap_err().contains("signal name"));
        assert!(parse_id("a b").unwrap_err().contains("signal_id"));
        assert!(parse_by("a b").unwrap_err().contains("by"));
        assert!(parse_payload("{").unwrap_err().contains("not JSON"));
        assert!(parse_payload("").unwrap_err().contains("not JSON"));
        let big = format!("\"{}\"", "x".repeat(MAX_SIGNAL_PAYLOAD_BYTES));
        assert!(parse_payload(&big).unwrap_err().contains("limit"));
        assert_eq!(parse_payload(r#"{"ok": true}"#).unwrap()["ok"], true);
        let missing = parse_payload("@/no/such/file").unwrap_err();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
