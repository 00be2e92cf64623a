//! `sagaflow list`: a table of the sagas whose records Redis holds.

use super::connect;
use super::run::RedisArgs;
use crate::operator;
use crate::saga::Phase;
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Running or compensating.
    Running,
    Completed,
    Compensated,
    /// A compensation failed for good, or a transition could not be written
    /// (`saga_failed`).
    Failed,
    /// Needs an operator: failed (parked included), or running with no live
    /// daemon to drive it.
    Stuck,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow list --state running
  sagaflow list --state stuck --since 24h
  sagaflow list --saga mission_start --since 1h

Records are kept for the retention after a saga ends (7 days by default).")]
pub struct ListArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Only sagas in this state.
    #[arg(long, value_enum)]
    state: Option<StateFilter>,
    /// Only sagas of this definition.
    #[arg(long)]
    saga: Option<String>,
    /// Only sagas started this recently (e.g. 1h, 30m, 2d).
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub async fn run(args: ListArgs) -> ExitCode {
    match list(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sagaflow list: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn list(args: ListArgs) -> Result<(), String> {
    let settings = args.redis.settings()?;
    let (_client, mut conn) = connect(&settings.redis_url).await?;
    let now = operator::redis_now_ms(&mut conn).await?;
    let mut rows = Vec::new();
    let live = operator::live_owners(&mut conn, &settings).await?;
    for record in operator::list(&mut conn, &settings).await? {
        let s = &record.state;
        if args.saga.as_ref().is_some_and(|name| *name != s.saga) {
            continue;
        }
        if args
            .since
            .is_some_and(|d| s.started_at_ms + (d.as_millis() as u64) < now)
        {
            continue;
        }
        let owned = record.owner.as_ref().is_some_and(|o| live.contains(o));
        let orphan = !s.phase.is_terminal() && !owned;
        let keep = match args.state {
            None => true,
            Some(StateFilter::Running) => !s.phase.is_terminal(),
            Some(StateFilter::Completed) => s.phase == Phase::Completed,
            Some(StateFilter::Compensated) => s.phase == Phase::Compensated,
            Some(StateFilter::Failed) => s.phase == Phase::Failed,
            Some(StateFilter::Stuck) => (s.phase == Phase::Failed && !s.abandoned) || orphan,
        };
        if keep {
            rows.push((record, orphan));
        }
    }
    rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.state.started_at_ms));
    let total = rows.len();
    println!(
        "{:<32}  {:<16} {:<12} {:>10} {:>9}  {:<22} correlation id",
        "saga id", "saga", "state", "started", "took", "at"
    );
    for (record, orphan) in rows.iter().take(args.limit) {
        let s = &record.state;
        let end = s.ended_at_ms.unwrap_or(now);
        let at = match (&s.current, &s.failure) {
            (Some(x), _) => format!("{} #{}", x.kind.as_str(), x.step),
            (None, Some(f)) if s.phase == Phase::Failed => format!("failed: {}", f.step),
            _ => String::new(),
        };
        let state = match (orphan, s.abandoned) {
            (true, _) => "orphaned",
            (_, true) => "abandoned",
            _ if s.parked.is_some() => "parked",
            _ => s.phase.status().as_str(),
        };
        println!(
            "{:<32}  {:<16} {:<12} {:>10} {:>9}  {:<22} {}",
            s.saga_id.as_str(),
            s.saga,
            state,
            ago(now.saturating_sub(s.started_at_ms)),
            human(end.saturating_sub(s.started_at_ms)),
            at,
            s.correlation_id
        );
    }
    if total > args.limit {
        println!("({} more; raise --limit)", total - args.limit);
    }
    Ok(())
}

fn human(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}

fn ago(ms: u64) -> String {
    format!("{} ago", human(ms))
}
