//! `sagaflow start`: writes a start entry, and with `--wait` follows the
//! saga live to its end.

use super::follow::{self, Target};
use super::run::RedisArgs;
use super::{connect, signals};
use crate::operator::{self, Start};
use crate::protocol::{CorrelationId, TraceParent};
use crate::streams;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow start --payload '{\"area\": \"hall-a\", \"robots\": 3}' --wait
  sagaflow start --saga mission_start --payload @mission.json --idempotency-key order-42

With --wait the exit code tells the outcome: 0 completed, 1 compensated,
2 failed or rejected, 3 when the saga could not be followed (Redis, timeout).")]
pub struct StartArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The saga to start; without it, the one bound to the trigger stream.
    #[arg(long)]
    saga: Option<String>,
    /// The saga's input: a JSON object, or @FILE to read it from a file.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Ties the saga's events and traces together: up to 128 printable
    /// ASCII characters, spaces included (quote them) [default: a new UUID].
    #[arg(long)]
    correlation_id: Option<String>,
    /// A start with a key seen before starts nothing new.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The caller's span (W3C `00-<trace id>-<span id>-<flags>`): the saga joins its trace.
    #[arg(long)]
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
}

pub async fn run(args: StartArgs) -> ExitCode {
    match start(args).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("sagaflow start: {message}");
            ExitCode::from(3)
        }
    }
}

async fn start(args: StartArgs) -> Result<ExitCode, String> {
    let payload = read_payload(&args.payload)?;
    if let Some(tp) = &args.traceparent {
        TraceParent::parse(tp)
            .ok_or_else(|| format!("--traceparent `{tp}` is not 00-<32 hex>-<16 hex>-<2 hex>"))?;
    }
    // Refused here rather than by the daemon, before anything is written.
    let correlation_id = match &args.correlation_id {
        Some(id) => CorrelationId::parse(id).map_err(|why| format!("--correlation-id: {why}"))?,
        None => CorrelationId::generate(),
    };
    let settings = args.redis.settings()?;
    let (client, mut conn) = connect(&settings.redis_url).await?;
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
            payload,
            correlation_id: Some(correlation_id.to_string()),
            idempotency_key: args.idempotency_key.clone(),
            traceparent: args.traceparent.clone(),
        },
    )
    .await
    .map_err(|e| format!("cannot write the start to {stream}: {e}"))?;
    println!("saga id         {}", started.saga_id);
    println!("correlation id  {correlation_id}");
    println!("start entry     {stream} {}", started.entry_id);
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    let shutdown = CancellationToken::new();
    signals::on_stop_signal(shutdown.clone());
    let target = Target {
        saga_id: started.saga_id.to_string(),
        entry_id: started.entry_id,
    };
    let outcome = follow::follow(
        &client,
        &settings.events_stream,
        from,
        target,
        args.timeout,
        &shutdown,
    )
    .await?;
    println!("\n{}", outcome.summary());
    Ok(outcome.exit_code())
}

/// The payload flag: a JSON object, or `@file` holding one.
fn read_payload(flag: &str) -> Result<String, String> {
    let text = match flag.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the payload file {path}: {e}"))?,
        None => flag.to_owned(),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => Err("--payload must be a JSON object".into()),
        Err(e) => Err(format!("--payload is not JSON: {e}")),
    }
}
