//! `sagaflow watch`: a live, readable tail of `saga:events`.

use super::output::{self, outln, Failure};
use super::pick::parse_correlation_id;
use super::run::RedisArgs;
use super::{connect, follow, render, signals};
use crate::protocol::fields as f;
use crate::protocol::CorrelationId;
use crate::streams;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow watch
  sagaflow watch --saga mission_start
  sagaflow watch --correlation-id order-42 --from-start
  sagaflow watch --correlation-id 'order 42' --json

Each line shows the time, the start of the saga id (which `status`, `cancel`
and the other operator commands take), the saga, its state, the event, the
step and what happened. With --json, one event per line as a JSON object.

Exit codes: 0 stopped (Ctrl-C, or the reader went away); 1 a bad
configuration file; 2 a usage error; 3 Redis cannot be reached or read.")]
pub struct WatchArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Only events of sagas of this definition.
    #[arg(long)]
    saga: Option<String>,
    /// Only events with this correlation id (exactly: spaces included).
    #[arg(long, value_parser = parse_correlation_id)]
    correlation_id: Option<CorrelationId>,
    /// Begin with the oldest event still on the stream, not with the next one.
    #[arg(long)]
    from_start: bool,
    /// One JSON object per event and line: the entry id, the fields, the
    /// payload as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: WatchArgs) -> ExitCode {
    output::exit("watch", watch(args).await)
}

async fn watch(args: WatchArgs) -> Result<ExitCode, Failure> {
    let settings = args.redis.settings().map_err(Failure::no)?;
    let (client, mut conn) = connect(&settings).await?;
    let mut reader = client
        .blocking(follow::POLL)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    // The last event now rather than `$`, which each read would take anew:
    // an event written between two reads would be missed.
    let mut from = if args.from_start {
        "0-0".to_owned()
    } else {
        streams::last_id(&mut conn, &settings.events_stream)
            .await
            .map_err(|e| format!("cannot read {}: {e}", settings.events_stream))?
    };
    let correlation_id = args.correlation_id.as_ref().map(|c| c.to_string());
    let matches = |fields: &crate::protocol::RawFields, name: &str, want: &Option<String>| {
        want.as_ref()
            .is_none_or(|w| fields.get(name).map(Vec::as_slice) == Some(w.as_bytes()))
    };
    while !shutdown.is_cancelled() {
        let entries = streams::read_after(
            &mut reader,
            &settings.events_stream,
            &from,
            None,
            follow::POLL,
        )
        .await
        .map_err(|e| format!("reading {} failed: {e}", settings.events_stream))?;
        for entry in entries {
            from = entry.id.clone();
            let fields = &entry.fields;
            if !matches(fields, f::SAGA, &args.saga)
                || !matches(fields, f::CORRELATION_ID, &correlation_id)
            {
                continue;
            }
            if args.json {
                output::json_line(&render::event_json(&entry.id, fields));
                continue;
            }
            let at: u64 = fields
                .get(f::TIMESTAMP)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            let when =
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at));
            let saga_id = String::from_utf8_lossy(fields.get(f::SAGA_ID).map_or(&[][..], |v| v));
            let saga = String::from_utf8_lossy(fields.get(f::SAGA).map_or(&[][..], |v| v));
            // A reader that went away (`| head`) ends the watch.
            outln!(
                "{when}  {:<8}  {:<16} {}",
                saga_id.get(..8).unwrap_or(&saga_id),
                output::fit(&saga, 16),
                render::event_columns(fields)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
