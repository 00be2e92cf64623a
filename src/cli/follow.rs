//! Following one saga live on `saga:events`, for `start --wait`, the
//! operator commands' `--wait` and `dev`: lines for logs and pipes, a
//! progress bar per step on a terminal, JSON lines for machines.

use super::output::{self, outln};
use super::render;
use crate::connection;
use crate::protocol::{fields as f, RawFields};
use crate::streams;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long one read of the events waits: a stop or a timeout is seen
/// within this.
pub const POLL: Duration = Duration::from_millis(500);

/// How the events of a followed saga are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Bars on a terminal, lines otherwise.
    People,
    /// One JSON object per event and line.
    Json,
    /// Nothing.
    Quiet,
}

/// How a followed saga ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// With the steps' results.
    Completed(Value),
    /// With the failed step, the reason, what was undone; `skipped_by_hand`
    /// added when an operator marked compensations as done while it was
    /// followed. A cancelled saga ends so too.
    Compensated(Value),
    /// A compensation failed for good: an operator is needed.
    Failed(Value),
    Rejected(String),
}

impl Outcome {
    /// 0 completed, 1 compensated (cancelled included), 2 failed or
    /// rejected.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }

    fn code(&self) -> u8 {
        match self {
            Outcome::Completed(_) => 0,
            Outcome::Compensated(_) => 1,
            Outcome::Failed(_) | Outcome::Rejected(_) => 2,
        }
    }
}

/// Which events belong to the followed saga.
pub struct Target {
    /// The saga's id; replaced by the existing saga's when the start turns
    /// out to be a duplicate.
    pub saga_id: String,
    /// The start entry, for `saga_rejected` and `saga_duplicate`, which
    /// carry no saga id.
    pub entry_id: String,
    /// Steps whose failed compensation an operator marked as done by hand.
    pub skipped_by_hand: Vec<String>,
}

/// Reads `events_stream` after `from` until the saga ends, showing each of
/// its events. `Err` when Redis fails, the wait times out or a stop comes.
pub async fn follow(
    client: &connection::Client,
    events_stream: &str,
    mut from: String,
    mut target: Target,
    timeout: Option<Duration>,
    shutdown: &CancellationToken,
    show: Show,
) -> Result<Outcome, String> {
    let mut reader = client
        .blocking(POLL)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))?;
    let mut view = View::new(show);
    let started = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return Err("stopped before the saga ended".into());
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(format!(
                "the saga {} did not end within {}",
                target.saga_id,
                humantime::format_duration(timeout.unwrap_or_default())
            ));
        }
        let entries = streams::read_after(&mut reader, events_stream, &from, None, POLL)
            .await
            .map_err(|e| format!("reading {events_stream} failed: {e}"))?;
        for entry in entries {
            from = entry.id.clone();
            let fields = &entry.fields;
            let event = text(fields, f::EVENT_TYPE);
            let payload: Value =
                serde_json::from_str(text(fields, f::PAYLOAD)).unwrap_or(Value::Null);
            let about_start = payload["entry_id"].as_str() == Some(target.entry_id.as_str());
            if event == "saga_duplicate" && about_start {
                let existing = payload["existing_saga_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                view.note(&format!(
                    "a saga with this idempotency key exists already: {existing}; following it"
                ));
                target.saga_id = existing;
                // Its events may be older than ours: read it from the start.
                from = "0-0".into();
                continue;
            }
            if event == "saga_rejected" && about_start {
                view.event(&entry.id, fields, started.elapsed());
                let reason = payload["reason"].as_str().unwrap_or("?").to_owned();
                return Ok(Outcome::Rejected(reason));
            }
            if text(fields, f::SAGA_ID) != target.saga_id {
                continue;
            }
            view.event(&entry.id, fields, started.elapsed());
            if event == "operator_action"
                && payload["action"] == "skip"
                && payload.get("refused").is_none()
            {
                target
                    .skipped_by_hand
                    .push(text(fields, f::STEP).to_owned());
            }
            match event {
                "saga_completed" => return Ok(Outcome::Completed(payload)),
                "saga_compensated" => {
                    let mut payload = payload;
                    if !target.skipped_by_hand.is_empty() {
                        payload["skipped_by_hand"] = serde_json::json!(target.skipped_by_hand);
                    }
                    return Ok(Outcome::Compensated(payload));
                }
                "saga_failed" => return Ok(Outcome::Failed(payload)),
                _ => {}
            }
        }
    }
}

fn text<'a>(fields: &'a RawFields, name: &str) -> &'a str {
    fields
        .get(name)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

/// Lines when stdout is not a terminal; bars when it is.
enum View {
    Lines,
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
    Json,
    Quiet,
}

impl View {
    fn new(show: Show) -> Self {
        match show {
            Show::Json => View::Json,
            Show::Quiet => View::Quiet,
            Show::People if std::io::stdout().is_terminal() => View::Bars {
                multi: MultiProgress::new(),
                bars: HashMap::new(),
            },
            Show::People => View::Lines,
        }
    }

    fn note(&self, line: &str) {
        match self {
            View::Lines => outln!("{line}"),
            View::Bars { multi, .. } => {
                let _ = multi.println(line);
            }
            View::Json | View::Quiet => {}
        }
    }

    fn event(&mut self, entry_id: &str, fields: &RawFields, elapsed: Duration) {
        let (multi, bars) = match self {
            View::Lines => {
                return outln!("{}", render::event_line(fields, elapsed.as_millis() as u64))
            }
            View::Json => return output::json_line(&render::event_json(entry_id, fields)),
            View::Quiet => return,
            View::Bars { multi, bars } => (multi, bars),
        };
        let event = text(fields, f::EVENT_TYPE);
        let step = text(fields, f::STEP);
        let payload: Value = serde_json::from_str(text(fields, f::PAYLOAD)).unwrap_or(Value::Null);
        let compensation = event.starts_with("compensation_");
        // A fan-out has one bar, counting its branches: hundreds of bars
        // would not fit a terminal.
        let branch = text(fields, f::BRANCH);
        let key = format!("{}{step}", if compensation { "undo " } else { "" });
        let bar = |bars: &mut HashMap<String, ProgressBar>| {
            bars.entry(key.clone())
                .or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(100));
                    bar.set_style(
                        ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos:>3}% {msg}")
                            .expect("a valid template")
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(key.clone());
                    bar
                })
                .clone()
        };
        if !branch.is_empty() || payload.get("branches").is_some() {
            let b = bar(bars);
            return fan_out_bar(&b, event, branch, &payload);
        }
        match event {
            "step_started" | "compensation_started" => {
                let attempt = payload["attempt"].as_u64().unwrap_or(1);
                let b = bar(bars);
                b.set_position(0);
                b.set_message(format!("attempt {attempt}"));
            }
            "step_progress" | "compensation_progress" => {
                let b = bar(bars);
                b.set_position(payload["progress"].as_f64().unwrap_or(0.0) as u64);
            }
            "step_completed" | "compensation_completed" => {
                let b = bar(bars);
                b.set_position(100);
                b.finish_with_message("done");
            }
            "step_failed" | "compensation_failed" => {
                let b = bar(bars);
                b.set_message(format!(
                    "failed: {}",
                    payload["error"].as_str().unwrap_or("?")
                ));
            }
            "step_timed_out" | "compensation_timed_out" => {
                bar(bars).set_message("timed out");
            }
            "step_retrying" | "compensation_retrying" => {
                let attempt = payload["attempt"].as_u64().unwrap_or(0);
                bar(bars).set_message(format!("retrying: attempt {attempt}"));
            }
            _ => {
                let _ = multi.println(render::event_line(fields, elapsed.as_millis() as u64));
            }
        }
    }
}

/// A fan-out's bar: its length is the number of branches, its position
/// those done; a branch failing says so.
fn fan_out_bar(bar: &ProgressBar, event: &str, branch: &str, payload: &Value) {
    if let Some(n) = payload.get("branches").and_then(Value::as_u64) {
        match event {
            "step_started" => {
                bar.set_length(n.max(1));
                bar.set_position(0);
                bar.set_message(format!("0/{n} branches"));
            }
            _ => {
                bar.set_position(bar.length().unwrap_or(n));
                bar.finish_with_message(format!("{n} branches done"));
            }
        }
        return;
    }
    let total = bar.length().unwrap_or(0);
    match event {
        "step_completed" => {
            bar.inc(1);
            bar.set_message(format!("{}/{total} branches done", bar.position()));
        }
        // How many branches are undone is known only at the end.
        "compensation_completed" => {
            bar.inc(1);
            bar.set_message(format!("{} branches undone", bar.position()));
        }
        "step_failed" | "compensation_failed" => bar.set_message(format!(
            "branch {branch} failed: {}",
            payload["error"].as_str().unwrap_or("?")
        )),
        "step_timed_out" | "compensation_timed_out" => {
            bar.set_message(format!("branch {branch} timed out"))
        }
        "step_retrying" | "compensation_retrying" => bar.set_message(format!(
            "branch {branch}: attempt {}",
            payload["attempt"].as_u64().unwrap_or(0)
        )),
        _ => {}
    }
}

impl Outcome {
    /// The end of the story, for people.
    pub fn summary(&self) -> String {
        let list = |v: &Value| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "nothing".into())
        };
        match self {
            Outcome::Completed(p) => format!("completed; results: {}", p["results"]),
            Outcome::Compensated(p) => {
                let by_hand: Vec<&str> = p["skipped_by_hand"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let skipped: Vec<&str> = p["skipped"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                // An operator skips a step's stuck compensations, all its
                // branches at once: `step[b]` was skipped by hand if `step` was.
                let (by_hand, without): (Vec<&str>, Vec<&str>) = skipped
                    .iter()
                    .partition(|s| by_hand.contains(&s.split('[').next().unwrap_or(s)));
                let names = |v: Vec<&str>| {
                    if v.is_empty() {
                        "nothing".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                let reason = p["reason"].as_str().unwrap_or("?");
                let cancelled = p.get("cancelled_by").is_some();
                let mut out = match reason.strip_prefix("cancelled by ").filter(|_| cancelled) {
                    Some(by) => format!(
                        "cancelled by {by}, during step {}; undone: {}",
                        p["failed_step"].as_str().unwrap_or("?"),
                        list(&p["compensated"]),
                    ),
                    None => format!(
                        "compensated: step {} failed ({reason}); undone: {}",
                        p["failed_step"].as_str().unwrap_or("?"),
                        list(&p["compensated"]),
                    ),
                };
                if !by_hand.is_empty() {
                    out.push_str(&format!("; skipped by hand: {}", names(by_hand)));
                }
                out.push_str(&format!("; without compensation: {}", names(without)));
                out
            }
            Outcome::Failed(p) => {
                // Several may be stuck (the branches of a fan-out): `stuck`
                // names them all, `compensation` the first, whose error it is.
                let failed = match render::stuck_list(p) {
                    Some(all) => format!(
                        "its compensations {all} failed ({}: {})",
                        p["compensation"].as_str().unwrap_or("?"),
                        p["error"].as_str().unwrap_or("?"),
                    ),
                    None => format!(
                        "its compensation {} failed ({})",
                        p["compensation"].as_str().unwrap_or("?"),
                        p["error"].as_str().unwrap_or("?"),
                    ),
                };
                format!(
                    "failed: step {} failed ({}), then {failed}; undone before: {}. \
                     See `sagaflow status`, then `retry`, `skip` or `abandon` it",
                    p["failed_step"].as_str().unwrap_or("?"),
                    p["reason"].as_str().unwrap_or("?"),
                    list(&p["compensated"]),
                )
            }
            Outcome::Rejected(reason) => format!("rejected: {reason}"),
        }
    }
}

impl Outcome {
    /// The outcome as one JSON object, for `--json`.
    pub fn json(&self, saga_id: &str) -> Value {
        let (outcome, payload) = match self {
            Outcome::Completed(p) => ("completed", p.clone()),
            Outcome::Compensated(p) if p.get("cancelled_by").is_some() => ("cancelled", p.clone()),
            Outcome::Compensated(p) => ("compensated", p.clone()),
            Outcome::Failed(p) => ("failed", p.clone()),
            Outcome::Rejected(reason) => ("rejected", serde_json::json!({ "reason": reason })),
        };
        serde_json::json!({
            "outcome": outcome,
            "saga_id": saga_id,
            "exit_code": self.code(),
            "payload": payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome;
    use serde_json::json;

    #[test]
    fn branches_skipped_by_hand_are_told_from_steps_without_compensation() {
        let outcome = Outcome::Compensated(json!({
            "failed_step": "merge",
            "reason": "no maps",
            "compensated": ["plan", "allocate"],
            "skipped": ["explore[0]", "explore[1]", "notify"],
            "skipped_by_hand": ["explore"],
        }));
        let summary = outcome.summary();
        assert!(
            summary.ends_with(
                "undone: plan, allocate; skipped by hand: explore[0], explore[1]; without compensation: notify"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_saga_stuck_on_several_branches_names_them_all() {
        let mut payload = json!({
            "failed_step": "merge",
            "reason": "no maps",
            "compensation": "explore[0]",
            "error": "gone",
            "compensated": [],
            "stuck": ["explore[0]", "explore[1]"],
        });
        let summary = Outcome::Failed(payload.clone()).summary();
        assert!(
            summary.contains(
                "then its compensations explore[0], explore[1] failed (explore[0]: gone); undone before: nothing"
            ),
            "{summary}"
        );
        payload["stuck"] = json!(["explore[0]"]);
        let summary = Outcome::Failed(payload).summary();
        assert!(
            summary.contains("then its compensation explore[0] failed (gone)"),
            "{summary}"
        );
    }
}
