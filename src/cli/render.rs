//! Human-readable lines for saga events, for `dev`, `start --wait` and
//! `watch`, and the names `status` and `list` give states and steps.

use super::output::{fit, fit_unit};
use crate::definition::SagaDefinition;
use crate::protocol::fields as f;
use crate::protocol::{CommandKind, RawFields};
use crate::saga::{Phase, SagaState, Unit, UnitState};
use serde_json::Value;

fn text<'a>(fields: &'a RawFields, name: &str) -> &'a str {
    fields
        .get(name)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("")
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn brief(v: &Value, limit: usize) -> String {
    let s = v.to_string();
    if s.chars().count() > limit {
        format!("{}…", s.chars().take(limit).collect::<String>())
    } else {
        s
    }
}

/// One line describing an event entry of `saga:events`, after the time
/// since the saga was started.
pub fn event_line(fields: &RawFields, elapsed_ms: u64) -> String {
    format!(
        "{:>7.3}s  {}",
        elapsed_ms as f64 / 1000.0,
        event_columns(fields)
    )
}

/// The state, event, step (a branch as `step[branch]`) and what happened,
/// in columns.
pub fn event_columns(fields: &RawFields) -> String {
    let event = text(fields, f::EVENT_TYPE);
    let step = text(fields, f::STEP);
    let unit = match text(fields, f::BRANCH) {
        "" => step.to_owned(),
        branch => format!("{step}[{branch}]"),
    };
    let payload: Value = serde_json::from_str(text(fields, f::PAYLOAD)).unwrap_or(Value::Null);
    let attempt = payload.get("attempt").and_then(Value::as_u64).unwrap_or(0);
    let branches = payload.get("branches").and_then(Value::as_u64);
    let detail = match event {
        "step_started" if branches.is_some() => format!(
            "fan-out of {} branches, at most {} at once",
            branches.unwrap_or(0),
            payload["max_concurrency"].as_u64().unwrap_or(0)
        ),
        "step_completed" if branches.is_some() => format!(
            "all {} branches done: {}",
            branches.unwrap_or(0),
            brief(&payload["result"], 100)
        ),
        "saga_started" => format!(
            "saga {} started, input {}",
            short(text(fields, f::SAGA_ID)),
            brief(&payload["input"], 80)
        ),
        "step_started" if payload.get("signal").is_some() => format!(
            "waits for signal {}",
            payload["signal"].as_str().unwrap_or("?")
        ),
        "step_completed" if payload.get("signal").is_some() => format!(
            "signal {} taken: {}",
            payload["signal"].as_str().unwrap_or("?"),
            brief(&payload["result"], 100)
        ),
        "step_started" | "compensation_started" => format!(
            "{} #{attempt}{} sent to {} (request {})",
            payload["command"].as_str().unwrap_or(step),
            match payload.get("item") {
                Some(Value::String(item)) => format!(" for {}", fit(item, 24)),
                Some(item) => format!(" for {}", brief(item, 24)),
                None => String::new(),
            },
            payload["stream"].as_str().unwrap_or("?"),
            short(payload["request_id"].as_str().unwrap_or(""))
        ),
        "step_progress" | "compensation_progress" => match payload["progress"].as_f64() {
            Some(p) => format!("{p:.0}%"),
            None => "working".to_owned(),
        },
        "step_completed" | "compensation_completed" => {
            format!("done: {}", brief(&payload["result"], 100))
        }
        "step_failed" | "compensation_failed" => format!(
            "failed: {}{}",
            payload["error"].as_str().unwrap_or("?"),
            if payload["retryable"] == Value::Bool(true) {
                " (retryable)"
            } else {
                ""
            }
        ),
        "step_timed_out" | "compensation_timed_out" => match payload["timeout"].as_str() {
            Some("ack") => format!("attempt {attempt} timed out: nobody took it (ack_timeout)"),
            Some("heartbeat") => {
                format!("attempt {attempt} timed out: the handler went silent (heartbeat_timeout)")
            }
            _ => format!("attempt {attempt} timed out"),
        },
        "step_retrying" | "compensation_retrying" => {
            format!(
                "attempt {attempt} in {} ms",
                payload["delay_ms"].as_u64().unwrap_or(0)
            )
        }
        "saga_completed" => "every step completed".to_owned(),
        "saga_compensated" => format!(
            "{} failed ({}); undone: {}",
            payload["failed_step"].as_str().unwrap_or("?"),
            payload["reason"].as_str().unwrap_or("?"),
            brief(&payload["compensated"], 100)
        ),
        // Several compensations may be stuck (the branches of a fan-out,
        // undone at once): `stuck` names them all, `compensation` the first.
        "saga_failed" => match stuck_list(&payload) {
            Some(all) => format!(
                "compensations of {all} could not complete ({}: {}); an operator is needed",
                payload["compensation"].as_str().unwrap_or("?"),
                payload["error"].as_str().unwrap_or("?")
            ),
            None => format!(
                "compensation of {} could not complete: {}; an operator is needed",
                payload["compensation"].as_str().unwrap_or("?"),
                payload["error"].as_str().unwrap_or("?")
            ),
        },
        "lock_waiting" => format!(
            "waits for {}: saga {} holds it{}",
            payload["lock"].as_str().unwrap_or("?"),
            short(payload["holder"].as_str().unwrap_or("?")),
            match payload["ahead"].as_u64() {
                Some(n) if n > 1 => format!(", {n} ahead"),
                _ => String::new(),
            }
        ),
        "lock_acquired" => format!(
            "took {}{}",
            payload["lock"].as_str().unwrap_or("?"),
            match payload["waited_ms"].as_u64() {
                Some(ms) if ms > 0 => format!(" after waiting {ms} ms"),
                _ => String::new(),
            }
        ),
        "locks_released" => format!("let go of {}", brief(&payload["locks"], 100)),
        "signal_received" => format!(
            "signal {} ({}){}",
            payload["signal"].as_str().unwrap_or("?"),
            payload["signal_id"].as_str().unwrap_or("?"),
            if payload["duplicate"] == Value::Bool(true) {
                ": a duplicate"
            } else {
                ""
            }
        ),
        "signal_rejected" => format!(
            "signal {} refused: {}",
            payload["signal"].as_str().unwrap_or("?"),
            payload["refused"].as_str().unwrap_or("?")
        ),
        "saga_rejected" => format!("rejected: {}", payload["reason"].as_str().unwrap_or("?")),
        "saga_duplicate" => format!(
            "duplicate of saga {}",
            payload["existing_saga_id"].as_str().unwrap_or("?")
        ),
        _ => brief(&payload, 100),
    };
    // Fixed widths, cut with an ellipsis: a long step name never pushes
    // the columns after it out of line. The step's column holds the
    // reference mission's branches whole (`perform_exploration[12]`); a
    // longer name is cut before its `[branch]`, which tells the lines of
    // the branches apart.
    format!(
        "{:<12} {:<22} {:<24} {detail}",
        fit(text(fields, f::STATUS), 12),
        fit(event, 22),
        fit_unit(&unit, 24)
    )
}

/// The compensations a `saga_failed` payload says are stuck, joined, when
/// there are more than one (its `stuck`).
pub fn stuck_list(payload: &Value) -> Option<String> {
    let stuck: Vec<&str> = (payload["stuck"].as_array()?.iter())
        .filter_map(Value::as_str)
        .collect();
    (stuck.len() > 1).then(|| stuck.join(", "))
}

/// How the reason of a saga cancelled by an operator begins (the saga
/// machine's operator rules write it so).
const CANCELLED_BY: &str = "cancelled by ";

/// Who cancelled the saga and why (`ops@example: customer withdrew`), if an
/// operator's cancel is why it unwound.
pub fn cancelled_by(state: &SagaState) -> Option<&str> {
    let failure = state.failure()?;
    // The flag, not the text: a handler's error may read "cancelled by".
    failure.cancelled_by.as_ref()?;
    matches!(
        state.phase,
        Phase::Compensating(_) | Phase::Compensated { .. }
    )
    .then(|| failure.reason.strip_prefix(CANCELLED_BY))
    .flatten()
}

/// The state a person would name: `cancelled` (compensated after an
/// operator's cancel), `abandoned`, `parked` (failed because a transition
/// could not be written), `orphaned` (not ended, and no live daemon owns
/// it), else the saga's status.
pub fn state_label(state: &SagaState, orphaned: bool) -> &'static str {
    if orphaned {
        "orphaned"
    } else if state.abandoned_by().is_some() {
        "abandoned"
    } else if state.parked().is_some() {
        "parked"
    } else if matches!(state.phase, Phase::Compensated { .. }) && cancelled_by(state).is_some() {
        "cancelled"
    } else if state.paused.is_some() {
        "paused"
    } else {
        state.phase.status().as_str()
    }
}

/// Names for a saga's steps, from the definition version it runs on.
pub struct Steps(Option<SagaDefinition>);

impl Steps {
    pub fn new(definition: Option<SagaDefinition>) -> Self {
        Self(definition)
    }

    /// Whether the definition is at hand.
    pub fn known(&self) -> bool {
        self.0.is_some()
    }

    /// The step's name, or `#<index>` when the definition is not at hand.
    pub fn name(&self, index: usize) -> String {
        self.0
            .as_ref()
            .and_then(|d| d.steps.get(index))
            .map_or_else(|| format!("#{index}"), |s| s.name.clone())
    }

    /// A step's name, or a branch's as `<step>[<branch>]`.
    pub fn label(&self, unit: Unit) -> String {
        match unit.branch {
            Some(branch) => format!("{}[{branch}]", self.name(unit.step)),
            None => self.name(unit.step),
        }
    }

    /// What was not undone: the steps and branches skipped by hand (their
    /// failed compensation marked as done by an operator), and those whose
    /// step defines no compensation.
    pub fn skipped(&self, state: &SagaState) -> (Vec<String>, Vec<String>) {
        let by_hand = |u: &&Unit| {
            matches!(
                state.work.get(**u),
                Some(UnitState::Skipped { by_hand: true })
            )
        };
        let (hand, without): (Vec<&Unit>, Vec<&Unit>) =
            state.work.skipped.iter().partition(by_hand);
        let labels = |units: Vec<&Unit>| units.into_iter().map(|u| self.label(*u)).collect();
        (labels(hand), labels(without))
    }

    /// Where the saga is: the steps under way (`undo <step>` for a
    /// compensation; a fan-out's branches as `<step>[0,1,2]`, or their
    /// number when there are more than [`BRANCHES_LISTED`]), or the
    /// compensations it is stuck on (`undo <step>` of a failed saga).
    pub fn at(&self, state: &SagaState) -> String {
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        let mut add =
            |what: String, branch: Option<u32>| match groups.iter_mut().find(|(w, _)| *w == what) {
                Some((_, branches)) => branches.extend(branch),
                None => groups.push((what, branch.into_iter().collect())),
            };
        for (unit, x) in state.work.exchanges() {
            let name = self.name(unit.step);
            match x.kind {
                CommandKind::Compensation => add(format!("undo {name}"), unit.branch),
                CommandKind::Action => add(name, unit.branch),
            }
        }
        if state.abandoned_by().is_none() {
            for (unit, _) in state.stuck() {
                add(format!("undo {}", self.name(unit.step)), unit.branch);
            }
        }
        let show = |(what, branches): (String, Vec<u32>)| match branches.len() {
            0 => what,
            n if n > BRANCHES_LISTED => format!("{what} ({n} branches)"),
            _ => {
                let list: Vec<String> = branches.iter().map(u32::to_string).collect();
                format!("{what}[{}]", list.join(","))
            }
        };
        let shown: Vec<String> = groups.into_iter().map(show).collect();
        shown.join(", ")
    }
}

/// The most branches of one step [`Steps::at`] lists one by one.
pub const BRANCHES_LISTED: usize = 4;

pub use crate::protocol::event::entry_json as event_json;

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(step: &str) -> RawFields {
        event("step_progress", step, r#"{"progress": 50}"#)
    }

    fn event(event_type: &str, step: &str, payload: &str) -> RawFields {
        [
            (f::EVENT_TYPE, event_type),
            (f::STATUS, "running"),
            (f::STEP, step),
            (f::PAYLOAD, payload),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
        .collect()
    }

    #[test]
    fn a_timeout_says_which_clock_ran_out() {
        let line = |payload| event_columns(&event("step_timed_out", "explore", payload));
        assert!(line(r#"{"attempt": 2}"#).ends_with("attempt 2 timed out"));
        assert!(line(r#"{"attempt": 1, "timeout": "completion"}"#).ends_with("attempt 1 timed out"));
        assert!(line(r#"{"attempt": 1, "timeout": "ack"}"#).contains("nobody took it"));
        assert!(line(r#"{"attempt": 1, "timeout": "heartbeat"}"#).contains("went silent"));
    }

    #[test]
    fn a_long_step_name_keeps_the_columns_in_line() {
        let short = event_columns(&fields("plan_route"));
        let long = event_columns(&fields(&"x".repeat(60)));
        let column = |s: &str| s[..s.find("50%").unwrap()].chars().count();
        assert_eq!(column(&short), column(&long), "{short}\n{long}");
        assert!(long.contains('…'), "{long}");
    }

    #[test]
    fn the_reference_missions_branches_are_told_apart_in_their_column() {
        let mut started = event("step_started", "perform_exploration", r#"{"attempt": 1}"#);
        started.insert(f::BRANCH.into(), b"12".to_vec());
        let line = event_columns(&started);
        assert!(line.contains(" perform_exploration[12]  "), "{line}");
        let mut long = event("step_started", "explore_the_whole_hall_and_more", "{}");
        long.insert(f::BRANCH.into(), b"3".to_vec());
        let line = event_columns(&long);
        assert!(line.contains(" explore_the_whole_ha…[3] "), "{line}");
        // Every line keeps its columns in place.
        let plain = event_columns(&event("step_started", "plan_route", "{}"));
        let column = |l: &str, what: &str| l.find(what).map(|i| l[..i].chars().count());
        assert_eq!(
            column(&line, "explore_the_whole_hall_and_more #0"),
            column(&plain, "plan_route #0"),
            "{line}\n{plain}"
        );
    }

    #[test]
    fn a_saga_stuck_on_several_branches_names_them_all() {
        let payload = r#"{"compensation": "explore[0]", "error": "gone",
            "stuck": ["explore[0]", "explore[2]"]}"#;
        let line = event_columns(&event("saga_failed", "explore", payload));
        assert!(
            line.contains(
                "compensations of explore[0], explore[2] could not complete (explore[0]: gone)"
            ),
            "{line}"
        );
        let one = r#"{"compensation": "explore[0]", "error": "gone", "stuck": ["explore[0]"]}"#;
        let line = event_columns(&event("saga_failed", "explore", one));
        assert!(
            line.contains("compensation of explore[0] could not complete: gone"),
            "{line}"
        );
    }

    #[test]
    fn a_branch_is_named_and_a_fan_out_says_how_many_branches_it_has() {
        let mut started = event(
            "step_started",
            "explore",
            r#"{"attempt": 1, "item": "r-7"}"#,
        );
        started.insert(f::BRANCH.into(), b"2".to_vec());
        let line = event_columns(&started);
        assert!(line.contains("explore[2]"), "{line}");
        assert!(line.contains("explore #1 for r-7 sent to"), "{line}");
        let fan_out = event(
            "step_started",
            "explore",
            r#"{"branches": 5, "max_concurrency": 2}"#,
        );
        let line = event_columns(&fan_out);
        assert!(
            line.contains("fan-out of 5 branches, at most 2 at once"),
            "{line}"
        );
        let done = event(
            "step_completed",
            "explore",
            r#"{"branches": 5, "result": []}"#,
        );
        assert!(event_columns(&done).contains("all 5 branches done"));
    }

    #[test]
    fn lock_and_signal_waits_are_told() {
        let waiting = r#"{"lock": "robot:7", "holder": "3f0c2a9e5d7b4c1e9a2f0b6d8e4c7a11",
            "ahead": 2, "timeout_ms": 600000}"#;
        let line = event_columns(&event("lock_waiting", "take", waiting));
        assert!(
            line.ends_with("waits for robot:7: saga 3f0c2a9e holds it, 2 ahead"),
            "{line}"
        );
        let line = event_columns(&event(
            "lock_acquired",
            "take",
            r#"{"lock": "robot:7", "waited_ms": 1200}"#,
        ));
        assert!(
            line.ends_with("took robot:7 after waiting 1200 ms"),
            "{line}"
        );
        let line = event_columns(&event("locks_released", "", r#"{"locks": ["robot:7"]}"#));
        assert!(line.ends_with(r#"let go of ["robot:7"]"#), "{line}");
        let started = event(
            "step_started",
            "approve",
            r#"{"signal": "approval", "deadline_ms": 3601000}"#,
        );
        let line = event_columns(&started);
        assert!(line.ends_with("waits for signal approval"), "{line}");
    }

    #[test]
    fn events_as_json_keep_the_payload_as_json() {
        let json = event_json("1-0", &fields("plan_route"));
        assert_eq!(json["id"], "1-0");
        assert_eq!(json["payload"]["progress"], 50);
        assert_eq!(json["step"], "plan_route");
    }
}
