//! `sagaflow locks [NAME ...]`: who holds each semantic lock and who waits
//! for it; and what `status` shows of one saga's locks and waits.

use super::connect;
use super::output::{self, outln, Failure};
use super::render::Steps;
use super::run::RedisArgs;
use super::status::{human, timestamp};
use crate::config::Settings;
use crate::connection::Conn;
use crate::operator::locks::{self as views, MAX_LOCKS_LISTED, MAX_SAGAS_LOOKED_AT};
use crate::operator::redis_now_ms;
use crate::protocol::locks::{check_lock_name, LockEntry};
use crate::saga::{SagaState, UnitState};
use clap::Args;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sagaflow locks
  sagaflow locks robot:7 robot:8
  sagaflow locks --json

Without a name, every lock that a saga not ended holds or waits for (and
those a failed saga keeps until an operator acts), found from the sagas'
records, never by a scan of the keyspace: the 10,000 running, compensating
and failed sagas that changed last are looked at (running and compensating
first), and at most 1,000 locks listed; the output says when that was not
all. A lock named on the command line is read whatever holds it.

Each lock has one line for the saga holding it (`holds`, since when it took
it) and one for each saga waiting (`waits N`, in the order they get it,
since when they asked). The saga that holds a lock keeps it until it
completes, finishes compensating, or is abandoned.

Exit codes: 0 shown (even none); 1 a bad configuration file; 2 a usage
error (a name that is no lock name); 3 Redis cannot be reached or read.")]
pub struct LocksArgs {
    /// Locks to show (e.g. robot:7); without any, every lock in use.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    #[command(flatten)]
    redis: RedisArgs,
    /// Print a JSON array of the locks, one object each
    /// ({lock, holder, waiters}), instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: LocksArgs) -> ExitCode {
    output::exit("locks", locks(args).await)
}

/// Column widths, cut with an ellipsis rather than push the next column
/// out of line (as `list` does).
const LOCK_W: usize = 24;
const QUEUE_W: usize = 9;
const SAGA_W: usize = 16;
const STEP_W: usize = 24;

async fn locks(args: LocksArgs) -> Result<ExitCode, Failure> {
    for name in &args.names {
        check_lock_name(name).map_err(Failure::usage)?;
    }
    if args.names.len() > MAX_LOCKS_LISTED {
        return Err(Failure::usage(format!(
            "at most {MAX_LOCKS_LISTED} locks at once"
        )));
    }
    let settings = args.redis.settings().map_err(Failure::no)?;
    let (_client, mut conn) = connect(&settings).await?;
    let now = redis_now_ms(&mut conn).await?;
    let (queues, note) = if args.names.is_empty() {
        let listing = views::listing(&mut conn, &settings).await?;
        let note = match (listing.complete, listing.locks.is_empty()) {
            (false, _) => Some(format!(
                "(not every lock may be listed: at most {MAX_SAGAS_LOOKED_AT} sagas looked at, \
                 {MAX_LOCKS_LISTED} locks listed; `sagaflow locks NAME` reads one lock)"
            )),
            (true, true) => Some(format!(
                "(no lock is held or waited for by the {} sagas that may hold one)",
                listing.looked_at
            )),
            (true, false) => None,
        };
        (listing.locks, note)
    } else {
        (
            views::queues(&mut conn, &settings, &args.names).await?,
            None,
        )
    };
    if args.json {
        let all: Vec<Value> = (queues.iter())
            .map(|q| serde_json::to_value(q).expect("a queue serializes"))
            .collect();
        outln!("{}", Value::Array(all));
        if let Some(note) = note {
            eprintln!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !queues.is_empty() {
        outln!(
            "{:<LOCK_W$} {:<QUEUE_W$} {:<32}  {:<SAGA_W$} {:<STEP_W$} since",
            "lock",
            "queue",
            "saga id",
            "saga",
            "step"
        );
    }
    for q in &queues {
        let lock = output::fit(&q.lock, LOCK_W);
        let Some(holder) = &q.holder else {
            outln!("{lock:<LOCK_W$} free");
            continue;
        };
        let held = holder.held_since_ms.unwrap_or(holder.entry.since_ms);
        outln!("{}", row(&lock, "holds", &holder.entry, held, now));
        for (i, waiter) in q.waiters.iter().enumerate() {
            let place = format!("waits {}", i + 1);
            outln!("{}", row(&lock, &place, waiter, waiter.since_ms, now));
        }
    }
    if let Some(note) = note {
        outln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}

fn row(lock: &str, place: &str, e: &LockEntry, since_ms: u64, now: u64) -> String {
    format!(
        "{lock:<LOCK_W$} {place:<QUEUE_W$} {:<32}  {:<SAGA_W$} {:<STEP_W$} {} ago",
        output::fit(&e.saga_id, 32),
        output::fit(&e.saga, SAGA_W),
        output::fit(&e.step, STEP_W),
        human(now.saturating_sub(since_ms))
    )
}

/// The held locks `status` lists one by one; more are counted.
const HELD_LISTED: usize = 10;

/// What `status` shows of saga `s` besides its commands: the locks it
/// holds, the lock each of its steps waits for (who holds it and how many
/// are ahead, read from the lock's queue now), and the signals its `wait`
/// steps wait for. Lines of a label and a text.
pub(super) async fn status_lines(
    conn: &mut Conn,
    settings: &Settings,
    s: &SagaState,
    steps: &Steps,
) -> Result<Vec<(&'static str, String)>, Failure> {
    let mut lines = Vec::new();
    for (name, held) in s.locks.iter().take(HELD_LISTED) {
        let text = format!(
            "{name} (taken by step {} at {})",
            held.step,
            timestamp(held.since_ms)
        );
        lines.push(("lock held", text));
    }
    if s.locks.len() > HELD_LISTED {
        let more = s.locks.len() - HELD_LISTED;
        lines.push(("lock held", format!("and {more} more")));
    }
    let id = s.saga_id.as_str();
    for (&step, work) in &s.work.steps {
        let Some(wait) = &work.locking else { continue };
        let Some(name) = wait.pending.first() else {
            continue;
        };
        let queue = views::queues(conn, settings, std::slice::from_ref(name)).await?;
        let live = queue.first().filter(|q| q.ahead_of(id).is_some());
        let who = |holder: Option<String>, ahead: Option<usize>| match (holder, ahead) {
            (Some(h), Some(n)) => format!("held by {h}, {n} ahead"),
            (Some(h), None) => format!("held by {h}"),
            (None, _) => "asking".to_owned(),
        };
        let state = match live {
            Some(q) if q.ahead_of(id) == Some(0) => "held by this saga, being taken".to_owned(),
            Some(q) => who(q.holder.as_ref().map(holder_text), q.ahead_of(id)),
            // Not in the queue (yet): what the saga heard last.
            None => who(wait.holder.clone(), wait.ahead),
        };
        let then = match &wait.pending[1..] {
            [] => String::new(),
            rest => format!("; then {}", rest.join(", ")),
        };
        let text = format!(
            "{name} for step {}: {state}{then}; the step fails at {} if it still waits",
            steps.name(step),
            timestamp(wait.deadline_ms)
        );
        lines.push(("waits for lock", text));
    }
    for (unit, state) in s.work.units() {
        if let UnitState::Awaiting(w) = state {
            let text = format!(
                "{} for step {}, until {}",
                w.signal,
                steps.label(unit),
                timestamp(w.deadline_ms)
            );
            lines.push(("awaits signal", text));
        }
    }
    Ok(lines)
}

fn holder_text(h: &views::Holder) -> String {
    format!(
        "saga {} ({}, step {})",
        h.entry.saga_id, h.entry.saga, h.entry.step
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_keeps_its_columns() {
        let e = LockEntry {
            saga_id: "3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11".into(),
            saga: "a_saga_with_a_very_long_name".into(),
            step: "take".into(),
            since_ms: 1_000,
        };
        let line = row("robot:7", "waits 12", &e, 1_000, 13_500);
        assert_eq!(
            line,
            "robot:7                  waits 12  3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11  \
             a_saga_with_a_v… take                     12.5s ago"
        );
    }
}
