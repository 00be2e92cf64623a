//! `sagaflow watch`: a live, readable tail of `saga:events`.

use super::run::RedisArgs;
use super::{connect, follow, render, signals};
use crate::protocol::fields as f;
use crate::protocol::CorrelationId;
use crate::streams;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow watch
  sagaflow watch --saga mission_start
  sagaflow watch --correlation-id order-42 --from-start
  sagaflow watch --correlation-id 'order 42'")]
pub struct WatchArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Only events of sagas of this definition.
    #[arg(long)]
    saga: Option<String>,
    /// Only events with this correlation id (exactly: spaces included).
    #[arg(long)]
    correlation_id: Option<String>,
    /// Begin with the oldest event still on the stream, not with the next one.
    #[arg(long)]
    from_start: bool,
}

pub async fn run(args: WatchArgs) -> ExitCode {
    match watch(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sagaflow watch: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn watch(args: WatchArgs) -> Result<(), String> {
    if let Some(id) = &args.correlation_id {
        CorrelationId::parse(id).map_err(|why| format!("--correlation-id: {why}"))?;
    }
    let settings = args.redis.settings()?;
    let (client, _conn) = connect(&settings.redis_url).await?;
    let mut reader = streams::blocking_connection(&client, Duration::from_secs(1))
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    let mut from = if args.from_start { "0-0" } else { "$" }.to_owned();
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
                || !matches(fields, f::CORRELATION_ID, &args.correlation_id)
            {
                continue;
            }
            let at: u64 = fields
                .get(f::TIMESTAMP)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .unwrap_or(0);
            let when =
                humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at));
            let saga_id = String::from_utf8_lossy(fields.get(f::SAGA_ID).map_or(&[][..], |v| v));
            let line = format!(
                "{when}  {:<8}  {:<16} {}",
                saga_id.get(..8).unwrap_or(&saga_id),
                String::from_utf8_lossy(fields.get(f::SAGA).map_or(&[][..], |v| v)),
                render::event_columns(fields)
            );
            // A reader that went away (`| head`) ends the watch.
            if writeln!(std::io::stdout(), "{line}").is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
