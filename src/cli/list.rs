//! `sagaflow list`: a table of the sagas whose records Redis holds.

use super::connect;
use super::output::{self, outln, Failure};
use super::render::{self, Steps};
use super::run::RedisArgs;
use super::status::human;
use crate::operator::{self, Record};
use crate::saga::Phase;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    /// Not ended: running or compensating (orphaned included).
    Running,
    Completed,
    /// Compensated after a step failed (cancelled ones are `cancelled`).
    Compensated,
    /// Compensated because an operator cancelled it.
    Cancelled,
    /// Ended failed: a compensation failed for good, or a transition could
    /// not be written (parked); abandoned ones included.
    Failed,
    /// Needs an operator: failed and not abandoned (parked included), or
    /// orphaned.
    Stuck,
    /// Not ended, and no live daemon holds its lease: none is driving it
    /// (every daemon is down, or none has taken it over yet).
    Orphaned,
    /// Failed, and given up by an operator (`sagaflow abandon`).
    Abandoned,
}

impl StateFilter {
    /// The phases a saga in this state is indexed under.
    fn phases(self) -> &'static [&'static str] {
        match self {
            Self::Running | Self::Orphaned => &["running", "compensating"],
            Self::Completed => &["completed"],
            Self::Compensated | Self::Cancelled => &["compensated"],
            Self::Failed | Self::Abandoned => &["failed"],
            Self::Stuck => &["failed", "running", "compensating"],
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow list --state running
  sagaflow list --state stuck --since 24h
  sagaflow list --saga mission_start --since 1h --json
  sagaflow list --paused-names

Records are kept for the retention after a saga ends (7 days by default).
The state column says cancelled, abandoned, parked or orphaned where that is
what a saga is; `at` names the step under way (`undo STEP` for its
compensation), or for a failed saga the compensation it is stuck on
(`undo STEP`: the STEP that `sagaflow skip --step` needs). Sagas are found through
the indexes of sagas by phase that the daemons keep, never by a scan of the
keyspace: the 10,000 that entered the states asked for last are looked at.

Exit codes: 0 listed (even none); 1 a bad configuration file; 2 a usage
error; 3 Redis cannot be reached or read.")]
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
    /// Print a JSON array of the sagas, one object each, instead of the table.
    #[arg(long)]
    json: bool,
    /// List the saga names paused (`sagaflow pause --name`) instead of
    /// sagas: who paused each, since when, why, and how many starts wait.
    #[arg(long, conflicts_with_all = ["state", "since"])]
    paused_names: bool,
}

pub async fn run(args: ListArgs) -> ExitCode {
    output::exit("list", list(args).await)
}

/// Column widths: a column is cut with an ellipsis rather than push the
/// next one out of line.
const SAGA_W: usize = 16;
const STATE_W: usize = 11;
const AT_W: usize = 32;

async fn list(args: ListArgs) -> Result<ExitCode, Failure> {
    let settings = args.redis.settings().map_err(Failure::no)?;
    let (_client, mut conn) = connect(&settings).await?;
    let live = operator::live_owners(&mut conn, &settings).await?;
    let now = live.now_ms;
    let mut paused = operator::paused_names(&mut conn, &settings).await?;
    paused.retain(|name, _| args.saga.as_ref().is_none_or(|s| s == name));
    if args.paused_names {
        list_paused(&paused, now, args.json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = Vec::new();
    let phases = args.state.map_or(&[][..], StateFilter::phases);
    for record in operator::list(&mut conn, &settings, phases, operator::MAX_LISTED).await? {
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
        let owned = record
            .owner
            .as_ref()
            .is_some_and(|o| live.owners.contains(o));
        let orphan = !s.phase.is_terminal() && !owned;
        let cancelled = render::cancelled_by(s).is_some();
        let compensated = matches!(s.phase, Phase::Compensated { .. });
        let failed = matches!(s.phase, Phase::Failed(_));
        let keep = match args.state {
            None => true,
            Some(StateFilter::Running) => !s.phase.is_terminal(),
            Some(StateFilter::Completed) => matches!(s.phase, Phase::Completed { .. }),
            Some(StateFilter::Compensated) => compensated && !cancelled,
            Some(StateFilter::Cancelled) => compensated && cancelled,
            Some(StateFilter::Failed) => failed,
            Some(StateFilter::Stuck) => (failed && s.abandoned_by().is_none()) || orphan,
            Some(StateFilter::Orphaned) => orphan,
            Some(StateFilter::Abandoned) => failed && s.abandoned_by().is_some(),
        };
        if keep {
            rows.push((record, orphan));
        }
    }
    rows.sort_by_key(|(r, _)| std::cmp::Reverse(r.state.started_at_ms));
    let total = rows.len();
    rows.truncate(args.limit);
    // Step names come from the definition versions the sagas run on.
    let mut definitions: HashMap<(String, String), Steps> = HashMap::new();
    for (record, _) in &rows {
        let s = &record.state;
        let key = (s.saga.clone(), s.definition_version.clone());
        if let std::collections::hash_map::Entry::Vacant(slot) = definitions.entry(key) {
            let def = operator::definition(&mut conn, &settings, s).await;
            slot.insert(Steps::new(def));
        }
    }
    let steps_of =
        |r: &Record| &definitions[&(r.state.saga.clone(), r.state.definition_version.clone())];
    if args.json {
        let sagas: Vec<Value> = rows
            .iter()
            .map(|(r, orphan)| row_json(r, *orphan, steps_of(r)))
            .collect();
        outln!("{}", Value::Array(sagas));
    } else {
        outln!(
            "{:<32}  {:<SAGA_W$} {:<STATE_W$} {:>10} {:>7}  {:<AT_W$} correlation id",
            "saga id",
            "saga",
            "state",
            "started",
            "took",
            "at"
        );
        for (record, orphan) in &rows {
            let s = &record.state;
            let end = s.phase.ended_at_ms().unwrap_or(now);
            outln!(
                "{:<32}  {:<SAGA_W$} {:<STATE_W$} {:>10} {:>7}  {:<AT_W$} {}",
                s.saga_id.as_str(),
                output::fit(&s.saga, SAGA_W),
                render::state_label(s, *orphan),
                format!("{} ago", human(now.saturating_sub(s.started_at_ms))),
                human(end.saturating_sub(s.started_at_ms)),
                output::fit(&steps_of(record).at(s), AT_W),
                s.correlation_id
            );
        }
    }
    if !args.json && !paused.is_empty() {
        outln!();
        list_paused(&paused, now, false);
    }
    if total > args.limit {
        let more = format!("({} more; raise --limit)", total - args.limit);
        if args.json {
            eprintln!("{more}");
        } else {
            outln!("{more}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn row_json(record: &Record, orphan: bool, steps: &Steps) -> Value {
    let s = &record.state;
    json!({
        "saga_id": s.saga_id,
        "saga": s.saga,
        "state": render::state_label(s, orphan),
        "phase": s.phase.status(),
        "correlation_id": s.correlation_id,
        "started_at_ms": s.started_at_ms,
        "ended_at_ms": s.phase.ended_at_ms(),
        "at": steps.at(s),
        "failed_step": s.failure().map(|f| &f.step),
        "stuck_on": s.stuck().next().filter(|_| s.abandoned_by().is_none()).map(|(u, _)| steps.label(u)),
        "owner": record.owner,
        "orphaned": orphan,
        "abandoned": s.abandoned_by().is_some(),
        "cancelled_by": render::cancelled_by(s),
    })
}

/// The saga names paused: a JSON object (name to `by`, `reason`,
/// `since_ms`, `held`), or a line each.
fn list_paused(paused: &BTreeMap<String, operator::PausedName>, now: u64, json: bool) {
    if json {
        let names: serde_json::Map<String, Value> = paused
            .iter()
            .map(|(name, p)| (name.clone(), p.json()))
            .collect();
        outln!("{}", Value::Object(names));
        return;
    }
    if paused.is_empty() {
        outln!("no saga name is paused");
        return;
    }
    outln!("saga names paused (new starts wait until `sagaflow resume --name NAME`):");
    for (name, p) in paused {
        outln!(
            "  {name}  by {} {} ago, {} start(s) held: {}",
            p.pause.by,
            human(now.saturating_sub(p.pause.since_ms)),
            p.held,
            p.pause.reason
        );
    }
}
