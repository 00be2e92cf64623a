//! `sagaflow status SAGA_ID`: one saga, from its record and its events.

use super::connect;
use super::output::{self, outln, Failure};
use super::pick::{self, SagaArgs};
use super::render::{self, Steps};
use super::run::RedisArgs;
use crate::operator;
use crate::protocol::fields as f;
use crate::saga::{Phase, Unit, Waiting};
use clap::Args;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow status 3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11
  sagaflow status 3f0c2a9e
  sagaflow status --correlation-id order-42

Several sagas with that correlation id are listed, newest first. The locks a
saga holds, the lock a step waits for (who holds it, how many are ahead) and
the signal a `wait` step waits for are shown; `sagaflow locks` lists them all.

Exit codes: 0 shown; 1 no such saga (never started, or its record expired
after the retention), or the start of an id that several sagas have; 2 a
usage error; 3 Redis cannot be reached or read.")]
pub struct StatusArgs {
    #[command(flatten)]
    which: SagaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Print the record and the events as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    output::exit("status", status(args).await)
}

/// What the events tell of one command (a step's action or compensation).
#[derive(Default)]
struct Exchange {
    /// A fan-out's own row: its branches, which have the attempts.
    branches: Option<u64>,
    attempts: u64,
    first_sent: Option<u64>,
    ended: Option<u64>,
    progress: Option<f64>,
    outcome: String,
    detail: String,
}

async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let settings = args.redis.settings().map_err(Failure::no)?;
    let (_client, mut conn) = connect(&settings).await?;
    let found = args.which.find(&mut conn, &settings).await?;
    if found.total > 1 {
        if args.json {
            let sagas: Vec<Value> = found
                .records
                .iter()
                .map(|r| serde_json::json!({ "state": r.state, "owner": r.owner }))
                .collect();
            outln!(
                "{:#}",
                serde_json::json!({ "sagas": sagas, "total": found.total })
            );
        } else {
            outln!(
                "{} sagas have this correlation id; `sagaflow status <saga id>` shows one:",
                found.total
            );
            outln!("{}", pick::table(&found));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let record = found
        .records
        .into_iter()
        .next()
        .ok_or_else(|| Failure::no("the saga's record expired while it was being read"))?;
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
        // `status` first: the state's own `phase` is an object, holding
        // what only that phase has (its failure, when it ended).
        let out = serde_json::json!({ "status": s.phase.status(), "state": s, "owner": record.owner, "expires_in_secs": record.expires_in, "events": events });
        outln!("{out:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let steps = Steps::new(operator::definition(&mut conn, &settings, s).await);

    let line = |k: &str, v: String| outln!("{k:<18} {v}");
    line("saga", format!("{} ({})", s.saga, s.saga_id));
    line("definition", format!("version {}", s.definition_version));
    // The reason says so; the events, while kept, confirm it (a handler's
    // error could begin with the same words).
    let cancelled = render::cancelled_by(s).filter(|_| {
        events.is_empty()
            || events.iter().any(|e| {
                let payload = e
                    .fields
                    .get(f::PAYLOAD)
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                    .unwrap_or(Value::Null);
                e.fields.get(f::EVENT_TYPE).map(Vec::as_slice) == Some(b"operator_action")
                    && payload["action"] == "cancel"
                    && payload.get("refused").is_none()
            })
    });
    let stuck: Vec<Unit> = s.stuck().map(|(u, _)| u).collect();
    let state = match (s.parked(), cancelled) {
        _ if s.abandoned_by().is_some() => format!(
            "failed (abandoned by an operator: {})",
            s.abandoned_by().unwrap_or("?")
        ),
        (Some(parked), _) => format!(
            "failed (parked while {}: {}; mend the cause, then `sagaflow retry` or `abandon` it)",
            parked.resume.status().as_str(),
            parked.reason
        ),
        (None, _) if matches!(s.phase, Phase::Failed(_)) => {
            "failed (stuck: `sagaflow retry`, `skip` or `abandon` it)".to_owned()
        }
        (None, Some(by)) if matches!(s.phase, Phase::Compensated { .. }) => {
            format!("cancelled (by {by}; compensated)")
        }
        (None, Some(by)) => format!("{} (cancelled by {by})", s.phase.status().as_str()),
        (None, None) => s.phase.status().as_str().to_owned(),
    };
    let state = match &s.paused {
        Some(p) => format!(
            "{state}, paused by {} since {}: {} (`sagaflow resume` carries it on)",
            p.by,
            timestamp(p.since_ms),
            p.reason
        ),
        None => state,
    };
    line("state", state);
    line("correlation id", s.correlation_id.to_string());
    line("trace id", s.trace_id.to_string());
    line("started", timestamp(s.started_at_ms));
    match s.phase.ended_at_ms() {
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
    let under_way: Vec<_> = s.work.exchanges().collect();
    for (unit, x) in under_way.iter().take(UNDER_WAY_LISTED) {
        let what = match x.waiting {
            Waiting::Reply { deadline_ms, .. } => {
                format!("awaiting the reply, due {}", timestamp(deadline_ms))
            }
            Waiting::Backoff { until_ms } => format!("retrying at {}", timestamp(until_ms)),
        };
        line(
            "under way",
            format!(
                "{} of {}, attempt {} (request {}): {what}",
                x.kind.as_str(),
                steps.label(*unit),
                x.attempt,
                x.request_id
            ),
        );
    }
    if under_way.len() > UNDER_WAY_LISTED {
        let more = under_way.len() - UNDER_WAY_LISTED;
        line("under way", format!("and {more} more"));
    }
    for (label, text) in super::locks::status_lines(&mut conn, &settings, s, &steps).await? {
        line(label, text);
    }
    if let Some(failure) = s.failure().filter(|_| cancelled.is_none()) {
        let at = match failure.branch {
            Some(b) => format!("{}[{b}]", failure.step),
            None => failure.step.clone(),
        };
        line("failed step", format!("{at}: {}", failure.reason));
    } else if let Some(failure) = s.failure() {
        line("cancelled at", failure.step.clone());
    }
    if let (Some(first), None, None) = (stuck.first(), s.abandoned_by(), s.parked()) {
        let name = steps.name(first.step);
        let all: Vec<String> = stuck.iter().map(|u| steps.label(*u)).collect();
        line(
            "stuck on",
            format!(
                "the compensation of {}: `sagaflow retry {id}`, \
                 `sagaflow skip {id} --step {name}` or `sagaflow abandon {id}`",
                all.join(", ")
            ),
        );
    }
    if !s.work.undone.is_empty() {
        let undone: Vec<String> = s.work.undone.iter().map(|u| steps.label(*u)).collect();
        line("undone", undone.join(", "));
    }
    let (by_hand, without) = steps.skipped(s);
    if !by_hand.is_empty() {
        line("skipped by hand", by_hand.join(", "));
    }
    if !without.is_empty() {
        // Without the definition, which is which cannot be told.
        let label = if steps.known() {
            "no compensation"
        } else {
            "not undone"
        };
        line(label, without.join(", "));
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
        let payload: Value = serde_json::from_str(&text(f::PAYLOAD)).unwrap_or(Value::Null);
        // A failed compensation marked as done by an operator, or the
        // step under way when an operator cancelled the saga.
        if event == "operator_action" && payload.get("refused").is_none() {
            let (key, outcome, what) = match payload["action"].as_str() {
                Some("skip") => ("compensation", "skipped", "by hand, by"),
                Some("cancel") => ("step", "cancelled", "by"),
                _ => continue,
            };
            let unit = match text(f::BRANCH) {
                b if b.is_empty() => text(f::STEP),
                b => format!("{}[{b}]", text(f::STEP)),
            };
            let detail = format!(
                "{what} {}: {}",
                payload["by"].as_str().unwrap_or("?"),
                payload["reason"].as_str().unwrap_or("")
            );
            if let Some(x) = exchanges.get_mut(&format!("{key} {unit}")) {
                if outcome == "skipped" || x.outcome == "running" {
                    x.outcome = outcome.into();
                    x.detail = detail.clone();
                }
            }
            // A skip marks every failed compensation of the step as done,
            // those of all its branches, though its event names one.
            if outcome == "skipped" {
                let branches = format!("{key} {}[", text(f::STEP));
                for (k, x) in exchanges.iter_mut() {
                    let stuck = matches!(x.outcome.as_str(), "failed" | "timed out");
                    if k.starts_with(&branches) && stuck {
                        x.outcome = outcome.into();
                        x.detail = detail.clone();
                    }
                }
            }
            continue;
        }
        let Some((kind, what)) = event.split_once('_') else {
            continue;
        };
        if kind != "step" && kind != "compensation" {
            continue;
        }
        let key = match text(f::BRANCH) {
            b if b.is_empty() => format!("{kind} {}", text(f::STEP)),
            b => format!("{kind} {}[{b}]", text(f::STEP)),
        };
        if !exchanges.contains_key(&key) {
            order.push(key.clone());
        }
        let x = exchanges.entry(key).or_default();
        let at: u64 = text(f::TIMESTAMP).parse().unwrap_or(0);
        match what {
            // A fan-out's own start: its branches have the attempts.
            "started" if payload.get("branches").is_some() => {
                x.branches = payload["branches"].as_u64();
                x.first_sent.get_or_insert(at);
                x.outcome = "running".into();
                x.detail = format!(
                    "{} branches, at most {} at once",
                    payload["branches"].as_u64().unwrap_or(0),
                    payload["max_concurrency"].as_u64().unwrap_or(0)
                );
            }
            "started" => {
                x.attempts += 1;
                x.first_sent.get_or_insert(at);
                x.ended = None;
                x.progress = None;
                x.outcome = "running".into();
                x.detail.clear();
                // A `wait` step's: it sends nothing, it waits for its signal.
                if let Some(signal) = payload["signal"].as_str() {
                    x.outcome = "awaiting".into();
                    x.detail = format!("signal {signal}");
                }
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
                x.detail = match payload["timeout"].as_str() {
                    Some(clock @ ("ack" | "heartbeat")) => format!("{clock}_timeout ran out"),
                    _ => String::new(),
                };
            }
            _ => {}
        }
    }
    // A fan-out that did not complete ended with its branches: failed
    // when one failed for good or timed out, else still running.
    for key in &order {
        if exchanges[key].branches.is_none() || exchanges[key].outcome != "running" {
            continue;
        }
        let prefix = format!("{key}[");
        let ends: Vec<(String, Option<u64>)> = (exchanges.iter())
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, b)| (b.outcome.clone(), b.ended))
            .collect();
        let running = ends.iter().any(|(o, _)| o == "running");
        let failed = ends.iter().find(|(o, _)| o == "failed" || o == "timed out");
        if let (false, Some((outcome, _))) = (running, failed) {
            let last = ends.iter().filter_map(|(_, at)| *at).max();
            let x = exchanges.get_mut(key).expect("a row of the order");
            x.outcome = outcome.clone();
            x.ended = last;
        }
    }
    if order.is_empty() {
        // A saga waiting for its first step's locks has events, none of a step.
        if events.is_empty() {
            outln!(
                "\n(no events left on {}: they are kept for the stream retention)",
                settings.events_stream
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    outln!();
    outln!(
        "{:<STEP_W$} {:<10} {:>8} {:>7} {:>8}  result or error",
        "step",
        "outcome",
        "attempts",
        "took",
        "progress"
    );
    // A fan-out with many branches shows one line per outcome of them.
    let mut branches: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for key in &order {
        if let Some((step, _)) = key.split_once('[') {
            branches
                .entry(step.to_owned())
                .or_default()
                .push(key.clone());
        }
    }
    let mut summarised = std::collections::BTreeSet::new();
    for key in order {
        if let Some((step, _)) = key.split_once('[') {
            let all = &branches[step];
            if all.len() > BRANCH_ROWS {
                if summarised.insert(step.to_owned()) {
                    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
                    for k in all {
                        *outcomes.entry(exchanges[k].outcome.as_str()).or_default() += 1;
                    }
                    let counts: Vec<String> =
                        outcomes.iter().map(|(o, n)| format!("{n} {o}")).collect();
                    let label = format!("{step}[0..{}]", all.len());
                    outln!(
                        "{:<STEP_W$} {:<10} {:>8} {:>7} {:>8}  {}",
                        output::fit_unit(&label, STEP_W),
                        "branches",
                        "-",
                        "-",
                        "-",
                        counts.join(", ")
                    );
                }
                continue;
            }
        }
        let x = &exchanges[&key];
        let took = match (x.first_sent, x.ended) {
            (Some(a), Some(b)) => human(b.saturating_sub(a)),
            _ => "-".into(),
        };
        // Progress only while it means something: the attempt under way.
        let progress = match x.progress {
            Some(p) if x.outcome == "running" => format!("{p:.0}%"),
            _ => "-".into(),
        };
        // A fan-out's own row has no attempt: its branches do.
        let attempts = match x.branches {
            Some(_) => "-".to_owned(),
            None => x.attempts.to_string(),
        };
        outln!(
            "{:<STEP_W$} {:<10} {attempts:>8} {took:>7} {progress:>8}  {}",
            output::fit_unit(&key, STEP_W),
            x.outcome,
            output::fit(&x.detail, 80)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The width of the step column: `compensation perform_exploration[12]`,
/// the reference mission's longest, whole; a longer one is cut before its
/// `[branch]`.
const STEP_W: usize = 37;

/// The branches of one step `status` shows one row each; more are
/// summed up in one row by outcome.
const BRANCH_ROWS: usize = 10;

/// The attempts under way `status` lists one by one; more are counted.
const UNDER_WAY_LISTED: usize = 10;

/// A duration in at most 7 characters: `850ms`, `12.5s`, `42m`, `36h`.
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m", ms / 60_000)
    } else if ms < 100 * 3_600_000 {
        format!("{}h", ms / 3_600_000)
    } else {
        format!("{}d", ms / 86_400_000)
    }
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

pub(super) fn timestamp(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
