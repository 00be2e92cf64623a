//! `sagaflow status SAGA_ID`: one saga, from its record and its events.

use super::connect;
use super::run::RedisArgs;
use crate::operator;
use crate::protocol::fields as f;
use crate::saga::Waiting;
use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sagaflow status 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11

Exit code 1 when there is no such saga (never started, or its record expired
after the retention) or Redis cannot be reached.")]
pub struct StatusArgs {
    /// The saga's id (as `start` prints it, or from `saga:events`).
    saga_id: String,
    #[command(flatten)]
    redis: RedisArgs,
    /// Print the record and the events as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    match status(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sagaflow status: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What the events tell of one command (a step's action or compensation).
#[derive(Default)]
struct Exchange {
    attempts: u64,
    first_sent: Option<u64>,
    ended: Option<u64>,
    progress: Option<f64>,
    outcome: String,
    detail: String,
}

async fn status(args: StatusArgs) -> Result<(), String> {
    let settings = args.redis.settings()?;
    let (_client, mut conn) = connect(&settings.redis_url).await?;
    let record = operator::read_existing(&mut conn, &settings, &args.saga_id).await?;
    let id = record.state.saga_id.to_string();
    let events = operator::events(&mut conn, &settings, &id).await?;
    let s = &record.state;
    if args.json {
        let events: Vec<Value> = events
            .iter()
            .map(|e| {
                let fields: BTreeMap<&str, String> = e
                    .fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                serde_json::json!({ "id": e.id, "fields": fields })
            })
            .collect();
        let out = serde_json::json!({ "state": s, "owner": record.owner, "expires_in_secs": record.expires_in, "events": events });
        println!("{out:#}");
        return Ok(());
    }

    let line = |k: &str, v: String| println!("{k:<18} {v}");
    line("saga", format!("{} ({})", s.saga, s.saga_id));
    line("definition", format!("version {}", s.definition_version));
    let note = match &s.parked {
        _ if s.abandoned => " (abandoned by an operator)".to_owned(),
        Some(parked) => format!(
            " (parked while {}: {}; mend the cause, then `sagaflow retry` or `abandon` it)",
            parked.phase.status().as_str(),
            parked.reason
        ),
        None if s.phase == crate::saga::Phase::Failed => {
            " (stuck: `sagaflow retry`, `skip` or `abandon` it)".to_owned()
        }
        None => String::new(),
    };
    line("state", format!("{}{note}", s.phase.status().as_str()));
    line("correlation id", s.correlation_id.to_string());
    line("trace id", s.trace_id.to_string());
    line("started", timestamp(s.started_at_ms));
    match s.ended_at_ms {
        Some(end) => line(
            "ended",
            format!(
                "{} (after {})",
                timestamp(end),
                millis(end.saturating_sub(s.started_at_ms))
            ),
        ),
        None => line("owner", record.owner.clone().unwrap_or_default()),
    }
    if let Some(x) = &s.current {
        let step = &x.step;
        let what = match x.waiting {
            Waiting::Reply { deadline_ms, .. } => {
                format!("awaiting the reply, due {}", timestamp(deadline_ms))
            }
            Waiting::Backoff { until_ms } => format!("retrying at {}", timestamp(until_ms)),
        };
        line(
            "under way",
            format!(
                "{} of step #{step}, attempt {} (request {}): {what}",
                x.kind.as_str(),
                x.attempt,
                x.request_id
            ),
        );
    }
    if let Some(failure) = &s.failure {
        line(
            "failed step",
            format!("{}: {}", failure.step, failure.reason),
        );
    }
    if !s.undone.is_empty() {
        line("undone", s.undone.join(", "));
    }
    if !s.skipped.is_empty() {
        line("no compensation", s.skipped.join(", "));
    }
    if let Some(ttl) = record.expires_in {
        line(
            "record expires",
            format!("in {}", millis(ttl as u64 * 1000)),
        );
    }

    // Per step and per compensation, from the events.
    let mut order: Vec<String> = Vec::new();
    let mut exchanges: BTreeMap<String, Exchange> = BTreeMap::new();
    for e in &events {
        let text = |k: &str| {
            e.fields
                .get(k)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let event = text(f::EVENT_TYPE);
        let Some((kind, what)) = event.split_once('_') else {
            continue;
        };
        if kind != "step" && kind != "compensation" {
            continue;
        }
        let key = format!("{kind} {}", text(f::STEP));
        if !exchanges.contains_key(&key) {
            order.push(key.clone());
        }
        let x = exchanges.entry(key).or_default();
        let at: u64 = text(f::TIMESTAMP).parse().unwrap_or(0);
        let payload: Value = serde_json::from_str(&text(f::PAYLOAD)).unwrap_or(Value::Null);
        match what {
            "started" => {
                x.attempts += 1;
                x.first_sent.get_or_insert(at);
                x.outcome = "running".into();
            }
            "progress" => x.progress = payload["progress"].as_f64(),
            "completed" => {
                x.ended = Some(at);
                x.outcome = "completed".into();
                x.detail = brief(&payload["result"]);
            }
            "failed" => {
                x.ended = Some(at);
                x.outcome = "failed".into();
                x.detail = payload["error"].as_str().unwrap_or("").to_owned();
            }
            "timed_out" => {
                x.ended = Some(at);
                x.outcome = "timed out".into();
                x.detail.clear();
            }
            _ => {}
        }
    }
    if order.is_empty() {
        println!(
            "\n(no events left on {}: they are kept for the stream retention)",
            settings.events_stream
        );
        return Ok(());
    }
    println!();
    println!(
        "{:<34} {:<10} {:>8} {:>9} {:>9}  result or error",
        "step", "outcome", "attempts", "took", "progress"
    );
    for key in order {
        let x = &exchanges[&key];
        let took = match (x.first_sent, x.ended) {
            (Some(a), Some(b)) => millis(b.saturating_sub(a)),
            _ => "-".into(),
        };
        let progress = x.progress.map_or("-".into(), |p| format!("{p:.0}%"));
        println!(
            "{key:<34} {:<10} {:>8} {took:>9} {progress:>9}  {}",
            x.outcome, x.attempts, x.detail
        );
    }
    Ok(())
}

fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn millis(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

fn timestamp(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
