//! `sagaflow start`: writes a start entry, waits for a daemon to take it,
//! and with `--wait` follows the saga live to its end.

use super::follow::{self, Outcome, Show, Target};
use super::output::{self, outln, Failure, DUPLICATE, USAGE};
use super::pick::parse_correlation_id;
use super::run::RedisArgs;
use super::{connect, signals};
use crate::connection;
use crate::operator::{self, Start, Taken};
use crate::protocol::{CorrelationId, TraceParent};
use crate::streams;
use clap::Args;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow start --payload '{\"area\": \"hall-a\", \"robots\": 3}' --wait
  sagaflow start --saga mission_start --payload @mission.json --idempotency-key order-42
  id=$(sagaflow start --quiet --payload @mission.json)

The command returns once a daemon has taken the start (its saga_started, or
the start refused as a duplicate or rejected), waiting at most
--accept-timeout: a start no daemon took within it stays on the trigger
stream, and runs when a daemon comes.

Exit codes: without --wait, 0 started; 1 a bad configuration file; 2 a usage
error, or the start was rejected (the reason is printed); 3 Redis cannot be
reached, or no daemon took the start within --accept-timeout; 4 a saga was
started before with this idempotency key (its id is printed). With --wait: 0 completed, 1 compensated (cancelled included), 2 failed or
rejected (or a usage error), 3 the saga could not be followed (Redis, no
daemon, --timeout, a stop signal). A start with an idempotency key seen
before follows the saga it started, and exits with that saga's outcome.")]
pub struct StartArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The saga to start; without it, the one bound to the trigger stream.
    #[arg(long)]
    saga: Option<String>,
    /// The saga's input: a JSON object, or @FILE to read it from a file.
    #[arg(long, default_value = "{}", value_parser = parse_payload)]
    payload: String,
    /// Ties the saga's events and traces together: up to 128 printable
    /// ASCII characters, spaces included (quote them) [default: a new UUID].
    #[arg(long, value_parser = parse_correlation_id)]
    correlation_id: Option<CorrelationId>,
    /// A start with a key seen before starts nothing new.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The caller's span (W3C `00-<trace id>-<span id>-<flags>`): the saga joins its trace.
    #[arg(long, value_parser = parse_traceparent)]
    traceparent: Option<String>,
    /// The trigger stream to write to [default: the `trigger_stream` setting,
    /// mission:start].
    #[arg(long)]
    stream: Option<String>,
    /// Follow the saga until it ends, and exit with its outcome.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (e.g. 5m) [default: never].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// How long to wait for a daemon to take the start.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    accept_timeout: Duration,
    /// Print JSON lines: the start, then with --wait each event, then the
    /// outcome.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
    /// Print only the saga's id (the existing saga's for a duplicate).
    #[arg(long, short)]
    quiet: bool,
}

pub async fn run(args: StartArgs) -> ExitCode {
    output::exit("start", start(args).await)
}

async fn start(args: StartArgs) -> Result<ExitCode, Failure> {
    let correlation_id = args
        .correlation_id
        .clone()
        .unwrap_or_else(CorrelationId::generate);
    let settings = args.redis.settings().map_err(Failure::no)?;
    let (client, mut conn) = connect(&settings).await?;
    let stream = args
        .stream
        .clone()
        .unwrap_or(settings.trigger_stream.clone());
    // Events are read from the last one before the start, so none is missed.
    let from = streams::last_id(&mut conn, &settings.events_stream)
        .await
        .map_err(|e| e.to_string())?;
    let started = operator::start(
        &mut conn,
        &stream,
        &Start {
            saga: args.saga.clone(),
            payload: args.payload.clone(),
            correlation_id: Some(correlation_id.to_string()),
            idempotency_key: args.idempotency_key.clone(),
            traceparent: args.traceparent.clone(),
        },
    )
    .await
    .map_err(|e| format!("cannot write the start to {stream}: {e}"))?;
    let new_id = started.saga_id.to_string();
    let entry_id = started.entry_id;
    let taken = taken(
        &client,
        &settings.events_stream,
        &from,
        (&stream, &entry_id, &new_id),
        args.accept_timeout,
    )
    .await?;
    let Some(taken) = taken else {
        // A start of a saga name paused is held: say so, if any is.
        let keys = crate::store::keys::Keys::of(&settings);
        let paused = crate::store::holds::paused_names(&mut conn, &keys)
            .await
            .unwrap_or_default();
        let names: Vec<String> = paused
            .iter()
            .map(|(name, p)| format!("{name} (by {}: {})", p.by, p.reason))
            .collect();
        let why = if names.is_empty() {
            "is one running?".to_owned()
        } else {
            format!(
                "saga names paused, whose starts are held until they are resumed: {}; \
                 else, is a daemon running?",
                names.join(", ")
            )
        };
        return Err(Failure::unavailable(format!(
            "no daemon took the start within {}: {why} The start stays on {stream} \
             (entry {entry_id}) and runs when a daemon takes it; `sagaflow watch \
             --correlation-id '{correlation_id}'` shows when",
            humantime::format_duration(args.accept_timeout)
        )));
    };
    let saga_id = match &taken {
        Taken::Started => new_id.clone(),
        Taken::Duplicate(existing) => existing.clone(),
        Taken::Rejected(_) => String::new(),
    };

    // What was started.
    if args.json {
        let mut line = json!({
            "correlation_id": correlation_id,
            "stream": stream,
            "entry_id": entry_id,
        });
        match &taken {
            Taken::Started => line["saga_id"] = json!(saga_id),
            Taken::Duplicate(existing) => {
                line["saga_id"] = json!(existing);
                line["existing"] = json!(true);
            }
            Taken::Rejected(reason) => line["rejected"] = json!(reason),
        }
        output::json_line(&line);
    } else if args.quiet {
        match &taken {
            Taken::Rejected(reason) => eprintln!("sagaflow start: rejected: {reason}"),
            Taken::Duplicate(existing) => {
                eprintln!("sagaflow start: an existing saga: this idempotency key started it");
                outln!("{existing}");
            }
            Taken::Started => outln!("{saga_id}"),
        }
    } else {
        match &taken {
            Taken::Rejected(reason) => outln!("rejected: {reason}"),
            Taken::Duplicate(existing) => {
                outln!("a saga with this idempotency key exists already: {existing}");
                outln!("saga id         {existing}");
            }
            Taken::Started => outln!("saga id         {saga_id}"),
        }
        outln!("correlation id  {correlation_id}");
        outln!("start entry     {stream} {entry_id}");
    }
    match (&taken, args.wait) {
        (Taken::Rejected(reason), wait) => {
            if wait && args.json {
                finish(&Outcome::Rejected(reason.clone()), "", Show::Json);
            }
            return Ok(ExitCode::from(USAGE));
        }
        (Taken::Duplicate(_), false) => return Ok(ExitCode::from(DUPLICATE)),
        (Taken::Started, false) => return Ok(ExitCode::SUCCESS),
        _ => {}
    }

    let show = match (args.json, args.quiet) {
        (true, _) => Show::Json,
        (_, true) => Show::Quiet,
        _ => Show::People,
    };
    if show == Show::People {
        outln!();
    }
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    let (from, entry_id) = match taken {
        // The saga's own events begin after `from`.
        Taken::Started => (from, entry_id),
        // The existing saga's may be older than ours: read from the start.
        _ => ("0-0".to_owned(), String::new()),
    };
    let target = Target {
        saga_id: saga_id.clone(),
        entry_id,
        skipped_by_hand: Vec::new(),
    };
    let outcome = follow::follow(
        &client,
        &settings.events_stream,
        from,
        target,
        args.timeout,
        &shutdown,
        show,
    )
    .await?;
    finish(&outcome, &saga_id, show);
    Ok(outcome.exit_code())
}

/// Prints how the followed saga ended.
pub fn finish(outcome: &Outcome, saga_id: &str, show: Show) {
    match show {
        Show::People => outln!("\n{}", outcome.summary()),
        Show::Json => output::json_line(&outcome.json(saga_id)),
        Show::Quiet => {}
    }
}

/// Reads the events after `from` until one says what became of the start
/// `(stream, entry id, saga id)`; `None` when none did within `within`.
async fn taken(
    client: &connection::Client,
    events_stream: &str,
    from: &str,
    (stream, entry_id, saga_id): (&str, &str, &str),
    within: Duration,
) -> Result<Option<Taken>, Failure> {
    let mut reader = client
        .blocking(follow::POLL)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let asked = Instant::now();
    let mut after = from.to_owned();
    while asked.elapsed() < within {
        let block = follow::POLL.min(within.saturating_sub(asked.elapsed()));
        let entries = streams::read_after(
            &mut reader,
            events_stream,
            &after,
            None,
            block.max(Duration::from_millis(1)),
        )
        .await
        .map_err(|e| format!("reading {events_stream} failed: {e}"))?;
        for entry in entries {
            after = entry.id.clone();
            if let Some(taken) = operator::taken_by(&entry, stream, entry_id, saga_id) {
                return Ok(Some(taken));
            }
        }
    }
    Ok(None)
}

/// The payload flag's check: a JSON object, or `@file` holding one (read
/// at once: the file's content is the payload).
pub fn parse_payload(flag: &str) -> Result<String, String> {
    let text = match flag.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the payload file {path}: {e}"))?,
        None => flag.to_owned(),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(_)) => Ok(text),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn parse_traceparent(text: &str) -> Result<String, String> {
    TraceParent::parse(text)
        .map(|_| text.to_owned())
        .ok_or_else(|| "not 00-<32 hex>-<16 hex>-<2 hex>".to_owned())
}
