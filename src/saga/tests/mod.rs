//! The saga rules, driven without Redis or a clock.

use super::*;
use crate::definition::{load_str, SagaDefinition};
use crate::protocol::{
    CommandKind, CorrelationId, EventType, Reply, ReplyStatus, RequestId, SagaId, SagaStatus,
    SpanId, TraceId,
};
use serde_json::{json, Value};
use std::path::Path;

mod branches;
mod signal_unwind;

const DEF: &str = "\
name: mission
steps:
  - name: allocate
    stream: resources:commands
    timeout: 1s
    retry: { max_attempts: 3, backoff: exponential, initial_delay: 100ms, max_delay: 1s }
    input: { robots: '${input.robots}' }
    compensation: { command: release, retry: { max_attempts: 2, initial_delay: 50ms } }
  - name: plan
    stream: routing:commands
    command: plan_route
    timeout: 2s
    input: { robot_ids: '${steps.allocate.result.robot_ids}', note: 'for ${saga_id}' }
    compensation: { command: cancel_route, input: { why: '${failure.reason}' } }
  - name: explore
    stream: exploration:commands
    timeout: 1s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 10ms }
  - name: integrate
    stream: mapping:commands
    compensation: { command: discard }
";

/// Sequential ids, so tests can name them.
#[derive(Clone)]
struct SeqIds(u64);

impl IdSource for SeqIds {
    fn request_id(&mut self) -> RequestId {
        self.0 += 1;
        RequestId::from_trusted(format!("{:032x}", self.0))
    }
    fn span_id(&mut self) -> SpanId {
        self.0 += 1;
        SpanId::parse(&format!("{:016x}", self.0)).unwrap()
    }
}

#[derive(Clone)]
struct Harness {
    def: SagaDefinition,
    state: SagaState,
    ids: SeqIds,
    now: u64,
    log: Vec<Effect>,
}

/// What one event did: its effects, and whether the state changed
/// (`persist` in [`types`]); empty when the event was ignored.
#[derive(Debug)]
struct Fx {
    effects: Vec<Effect>,
    changed: bool,
}

impl Fx {
    fn of(transition: Result<Transition, Ignored>) -> Self {
        match transition {
            Ok(t) => Self {
                effects: t.effects,
                changed: t.changed,
            },
            Err(_) => Self {
                effects: Vec::new(),
                changed: false,
            },
        }
    }

    fn is_empty(&self) -> bool {
        self.effects.is_empty() && !self.changed
    }
}

impl std::ops::Deref for Fx {
    type Target = [Effect];
    fn deref(&self) -> &[Effect] {
        &self.effects
    }
}

impl Harness {
    fn new() -> (Self, Fx) {
        Self::with(DEF)
    }

    fn with(definition: &str) -> (Self, Fx) {
        let def = load_str(Path::new("mission.yaml"), definition).unwrap();
        let mut ids = SeqIds(0);
        let init = SagaInit {
            saga_id: SagaId::from_trusted("5".repeat(32)),
            correlation_id: CorrelationId::from_trusted("corr"),
            trace_id: TraceId::parse(&"a".repeat(32)).unwrap(),
            parent_span_id: None,
            reply_stream: "saga:replies:test".into(),
            input: json!({"robots": 2}),
        };
        let (state, started) = start(&def, init, 1_000, &mut ids);
        let fx = Fx::of(Ok(started));
        let h = Harness {
            def,
            state,
            ids,
            now: 1_000,
            log: fx.effects.clone(),
        };
        (h, fx)
    }

    fn apply(&mut self, event: Event) -> Fx {
        Fx::of(self.try_apply(event))
    }

    /// Applies an event, checking on every transition that `changed` says
    /// whether the state changed (the store writes it only then), and that
    /// an ignored event changes nothing.
    fn try_apply(&mut self, event: Event) -> Result<Transition, Ignored> {
        let before = self.state.clone();
        let applied = apply(&mut self.state, &self.def, event, self.now, &mut self.ids);
        match &applied {
            Ok(t) => {
                assert_eq!(
                    t.changed,
                    self.state != before,
                    "`changed` must say whether the state changed; effects: {:?}",
                    t.effects
                );
                self.log.extend(t.effects.clone());
            }
            Err(ignored) => assert_eq!(self.state, before, "ignored ({ignored:?}) yet changed"),
        }
        applied
    }

    /// The one exchange under way (these sagas run one step at a time).
    fn current(&self) -> &Exchange {
        let mut all = self.state.work.exchanges();
        let (_, x) = all.next().expect("an exchange under way");
        assert!(all.next().is_none(), "one exchange under way");
        x
    }

    fn current_unit(&self) -> Unit {
        let (unit, _) = self.state.work.exchanges().next().expect("an exchange");
        unit
    }

    fn status(&self) -> SagaStatus {
        self.state.phase.status()
    }

    /// What was undone, in order, as `step` or `step[branch]`.
    fn undone(&self) -> Vec<String> {
        let label = |u: &Unit| match u.branch {
            Some(b) => format!("{}[{b}]", self.def.steps[u.step].name),
            None => self.def.steps[u.step].name.clone(),
        };
        self.state.work.undone.iter().map(label).collect()
    }

    fn current_attempt(&self) -> u32 {
        self.current().attempt
    }

    fn current_request(&self) -> RequestId {
        self.current().request_id.clone()
    }

    fn reply(&mut self, status: ReplyStatus) -> Fx {
        self.reply_reached(status, None)
    }

    /// A reply that reached Redis at `reached_ms`.
    fn reply_reached(&mut self, status: ReplyStatus, reached_ms: Option<u64>) -> Fx {
        let reply = Reply {
            saga_id: Some(self.state.saga_id.clone()),
            request_id: Some(self.current_request()),
            event_type: None,
            correlation_id: None,
            traceparent: None,
            status,
            timestamp_ms: None,
            reached_ms,
        };
        self.apply(Event::Reply(reply))
    }

    fn complete(&mut self, result: Value) -> Fx {
        self.reply(ReplyStatus::Completed { result })
    }

    fn fail(&mut self, retryable: bool) -> Fx {
        self.reply(ReplyStatus::Failed {
            error: "boom".into(),
            retryable,
        })
    }

    fn tick_at(&mut self, now: u64) -> Fx {
        self.now = now;
        self.apply(Event::Tick)
    }

    fn deadline(&self) -> u64 {
        self.state.wake_at().unwrap()
    }

    /// Drives every step to completion from where the saga stands.
    fn complete_steps(&mut self, n: usize) {
        for _ in 0..n {
            let step = self.current_unit().step;
            let result = match step {
                0 => json!({"robot_ids": ["r1", "r2"]}),
                _ => json!({"step": step}),
            };
            self.complete(result);
        }
    }

    fn events(&self) -> Vec<(EventType, Option<String>, SagaStatus)> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(ev) => Some((ev.event_type, ev.step.clone(), ev.status)),
                _ => None,
            })
            .collect()
    }

    fn sent(&self) -> Vec<(String, CommandKind, u32)> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::Send { command, .. } => {
                    Some((command.event_type.clone(), command.kind, command.attempt))
                }
                _ => None,
            })
            .collect()
    }

    fn last_event_payload(&self, t: EventType) -> Value {
        self.log
            .iter()
            .rev()
            .find_map(|e| match e {
                Effect::Emit(ev) if ev.event_type == t => Some(ev.payload.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {t:?} event"))
    }
}

fn types(fx: &Fx) -> Vec<String> {
    let persist = fx.changed.then(|| "persist".to_owned());
    let effects = fx.effects.iter().map(|e| match e {
        Effect::Send { command, .. } => {
            format!("send {}#{}", command.event_type, command.attempt)
        }
        Effect::Emit(ev) => ev.event_type.as_str().to_owned(),
        Effect::ArmTimer { .. } => "timer".to_owned(),
        Effect::Finish => "finish".to_owned(),
        Effect::Unlock { locks } => format!("unlock {}", locks.join(",")),
    });
    persist.into_iter().chain(effects).collect()
}

#[test]
fn start_persists_announces_and_sends_the_first_command() {
    let (h, effects) = Harness::new();
    assert_eq!(
        types(&effects),
        [
            "persist",
            "saga_started",
            "step_started",
            "send allocate#1",
            "timer"
        ]
    );
    let Effect::Send { stream, command } = &effects[2] else {
        unreachable!()
    };
    assert_eq!(stream, "resources:commands");
    assert_eq!(command.kind, CommandKind::Action);
    assert_eq!(command.payload, json!({"robots": 2}));
    assert_eq!(command.deadline_ms, 2_000);
    assert_eq!(command.reply_stream, "saga:replies:test");
    assert_eq!(command.traceparent.trace_id.as_str(), "a".repeat(32));
    assert_eq!(effects[3], Effect::ArmTimer { at_ms: 2_000 });
    assert_eq!(h.status(), SagaStatus::Running);
}

#[test]
fn a_sunny_saga_completes_with_every_result() {
    let (mut h, _) = Harness::new();
    let effects = h.complete(json!({"robot_ids": ["r1", "r2"]}));
    let Some(Effect::Send { command, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("no command")
    };
    assert_eq!(command.event_type, "plan_route");
    assert_eq!(command.step, "plan");
    assert_eq!(
        command.payload,
        json!({"robot_ids": ["r1", "r2"], "note": format!("for {}", "5".repeat(32))})
    );
    h.complete_steps(2);
    // explore has no input template: it gets the whole context
    let explore_payload = h
        .log
        .iter()
        .find_map(|e| match e {
            Effect::Send { command, .. } if command.step == "explore" => {
                Some(command.payload.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(explore_payload["input"], json!({"robots": 2}));
    assert_eq!(
        explore_payload["steps"]["plan"]["result"],
        json!({"step": 1})
    );
    let effects = h.complete(json!({"map": "m1"}));
    assert_eq!(
        types(&effects),
        ["persist", "step_completed", "saga_completed", "finish"]
    );
    assert_eq!(h.status(), SagaStatus::Completed);
    let results = h.last_event_payload(EventType::SagaCompleted)["results"].clone();
    assert_eq!(results["integrate"], json!({"map": "m1"}));
    assert_eq!(results["allocate"], json!({"robot_ids": ["r1", "r2"]}));
    // a terminal saga ignores everything
    assert!(h.tick_at(1_000_000).is_empty());
}

#[test]
fn a_failure_at_each_step_undoes_the_completed_ones_in_reverse() {
    // (failing step, expected compensation commands in order, skipped)
    let cases: [(usize, &[&str], &[&str]); 4] = [
        (0, &[], &[]),
        (1, &["release"], &[]),
        (2, &["cancel_route", "release"], &[]),
        (3, &["cancel_route", "release"], &["explore"]),
    ];
    for (failing, expected, skipped) in cases {
        let (mut h, _) = Harness::new();
        h.complete_steps(failing);
        h.fail(false);
        loop {
            let kind = h.state.work.exchanges().next().map(|(_, x)| x.kind);
            let Some(kind) = kind else { break };
            assert_eq!(kind, CommandKind::Compensation);
            h.complete(json!({}));
        }
        let comps: Vec<String> = h
            .sent()
            .into_iter()
            .filter(|(_, k, _)| *k == CommandKind::Compensation)
            .map(|(c, _, _)| c)
            .collect();
        assert_eq!(comps, expected, "failing step {failing}");
        assert_eq!(h.status(), SagaStatus::Compensated);
        let payload = h.last_event_payload(EventType::SagaCompensated);
        assert_eq!(payload["failed_step"], json!(h.def.steps[failing].name));
        assert_eq!(payload["reason"], json!("boom"));
        assert_eq!(payload["skipped"], json!(skipped));
        let undone: Vec<&str> = expected
            .iter()
            .map(|c| match *c {
                "release" => "allocate",
                "cancel_route" => "plan",
                other => other,
            })
            .collect();
        assert_eq!(payload["compensated"], json!(undone));
        let last = h.events().last().cloned().unwrap();
        assert_eq!(last.0, EventType::SagaCompensated);
        assert_eq!(last.2, SagaStatus::Compensated);
    }
}

#[test]
fn compensation_payloads_carry_the_failure() {
    let (mut h, _) = Harness::new();
    h.complete_steps(2);
    h.fail(false);
    let Some(Effect::Send { command, .. }) = h
        .log
        .iter()
        .rev()
        .find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!()
    };
    assert_eq!(command.event_type, "cancel_route");
    assert_eq!(command.kind, CommandKind::Compensation);
    assert_eq!(command.step, "plan");
    assert_eq!(command.attempt, 1);
    assert_eq!(command.payload, json!({"why": "boom"}));
    h.complete(json!({}));
    let Some(Effect::Send { command, .. }) = h
        .log
        .iter()
        .rev()
        .find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!()
    };
    // no template: the context, with the failure
    assert_eq!(
        command.payload["failure"],
        json!({"step": "explore", "reason": "boom"})
    );
    assert_eq!(
        command.payload["steps"]["allocate"]["result"],
        json!({"robot_ids": ["r1", "r2"]})
    );
}

#[test]
fn timeouts_are_retried_with_new_request_ids_then_undone() {
    let (mut h, _) = Harness::new();
    let first = h.current_request();
    assert!(
        h.tick_at(1_999).is_empty(),
        "nothing is due before the deadline"
    );
    let effects = h.tick_at(2_000);
    assert_eq!(
        types(&effects),
        ["persist", "step_timed_out", "step_retrying", "timer"]
    );
    assert_eq!(
        h.last_event_payload(EventType::StepRetrying),
        json!({"attempt": 2, "delay_ms": 100})
    );
    assert_eq!(effects[2], Effect::ArmTimer { at_ms: 2_100 });
    let effects = h.tick_at(2_100);
    assert_eq!(
        types(&effects),
        ["persist", "step_started", "send allocate#2", "timer"]
    );
    let second = h.current_request();
    assert_ne!(first, second);
    // a late reply to the first attempt is ignored
    let late = Reply {
        saga_id: Some(h.state.saga_id.clone()),
        request_id: Some(first),
        event_type: None,
        correlation_id: None,
        traceparent: None,
        status: ReplyStatus::Completed { result: json!({}) },
        timestamp_ms: None,
        reached_ms: None,
    };
    assert!(h.apply(Event::Reply(late)).is_empty());
    let d = h.deadline();
    h.tick_at(d);
    assert_eq!(
        h.last_event_payload(EventType::StepRetrying),
        json!({"attempt": 3, "delay_ms": 200})
    );
    let d = h.deadline();
    h.tick_at(d);
    let d = h.deadline();
    let effects = h.tick_at(d);
    // the third timeout ends the step; its effect is unknown, so it is undone
    assert_eq!(
        types(&effects),
        [
            "persist",
            "step_timed_out",
            "compensation_started",
            "send release#1",
            "timer"
        ]
    );
    assert_eq!(h.state.failure().unwrap().step, "allocate");
    assert!(h.state.failure().unwrap().reason.contains("timed out"));
    h.complete(json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(
        h.last_event_payload(EventType::SagaCompensated)["compensated"],
        json!(["allocate"])
    );
}

#[test]
fn a_step_that_timed_out_once_is_undone_even_if_it_then_fails() {
    let (mut h, _) = Harness::new();
    h.tick_at(2_000);
    h.tick_at(2_100);
    h.fail(false);
    assert_eq!(h.status(), SagaStatus::Compensating);
    assert_eq!(
        h.sent().last().unwrap(),
        &("release".to_owned(), CommandKind::Compensation, 1)
    );
}

#[test]
fn a_retryable_failure_then_success_carries_on() {
    let (mut h, _) = Harness::new();
    let effects = h.fail(true);
    assert_eq!(
        types(&effects),
        ["persist", "step_failed", "step_retrying", "timer"]
    );
    assert_eq!(h.status(), SagaStatus::Running);
    h.tick_at(1_100);
    assert_eq!(
        h.sent().last().unwrap(),
        &("allocate".to_owned(), CommandKind::Action, 2)
    );
    h.complete(json!({"robot_ids": ["r9"]}));
    assert_eq!(
        h.sent().last().unwrap(),
        &("plan_route".to_owned(), CommandKind::Action, 1)
    );
    // a step failing without retries left ends at once, not compensated itself
    let (mut h, _) = Harness::new();
    h.fail(true);
    h.tick_at(1_100);
    h.fail(true);
    h.tick_at(h.deadline());
    let effects = h.fail(true);
    assert_eq!(
        types(&effects),
        ["persist", "step_failed", "saga_compensated", "finish"]
    );
    assert_eq!(
        h.last_event_payload(EventType::SagaCompensated)["reason"],
        json!("boom (after 3 attempts)")
    );
}

#[test]
fn unreadable_final_replies_count_as_retryable_failures() {
    let (mut h, _) = Harness::new();
    h.reply(ReplyStatus::Unreadable {
        reason: "unknown status `done`".into(),
    });
    let payload = h.last_event_payload(EventType::StepFailed);
    assert_eq!(payload["retryable"], json!(true));
    assert!(payload["error"].as_str().unwrap().contains("done"));
    assert!(matches!(h.current().waiting, Waiting::Backoff { .. }));
}

#[test]
fn stray_replies_change_nothing() {
    let (mut h, _) = Harness::new();
    let before = h.state.clone();
    let mut stray = Reply {
        saga_id: Some(h.state.saga_id.clone()),
        request_id: Some(RequestId::from_trusted("f".repeat(32))),
        event_type: None,
        correlation_id: None,
        traceparent: None,
        status: ReplyStatus::Completed { result: json!({}) },
        timestamp_ms: None,
        reached_ms: None,
    };
    assert!(h.apply(Event::Reply(stray.clone())).is_empty());
    stray.request_id = Some(h.current_request());
    stray.saga_id = Some(SagaId::from_trusted("6".repeat(32)));
    assert!(
        h.apply(Event::Reply(stray.clone())).is_empty(),
        "another saga's reply"
    );
    stray.saga_id = Some(h.state.saga_id.clone());
    stray.request_id = None;
    stray.event_type = Some("plan_route".into());
    assert!(
        h.apply(Event::Reply(stray)).is_empty(),
        "legacy reply for another command"
    );
    assert_eq!(h.state, before);
}

#[test]
fn progress_is_recorded_but_not_persisted() {
    let (mut h, _) = Harness::new();
    assert!(h.reply(ReplyStatus::Start).is_empty());
    let effects = h.reply(ReplyStatus::Progress {
        percent: Some(50.0),
        details: json!({"stage": "x"}),
    });
    assert_eq!(types(&effects), ["step_progress"]);
    assert_eq!(
        h.last_event_payload(EventType::StepProgress),
        json!({"attempt": 1, "progress": 50.0, "details": {"stage": "x"}})
    );
}

#[test]
fn legacy_replies_match_by_command_name() {
    let (mut h, _) = Harness::new();
    let reply = Reply {
        saga_id: Some(h.state.saga_id.clone()),
        request_id: None,
        event_type: Some("allocate".into()),
        correlation_id: None,
        traceparent: None,
        status: ReplyStatus::Completed {
            result: json!({"robot_ids": ["r1"]}),
        },
        timestamp_ms: None,
        reached_ms: None,
    };
    h.apply(Event::Reply(reply));
    assert_eq!(
        h.state.results["allocate"].value(),
        json!({"robot_ids": ["r1"]})
    );
}

#[test]
fn a_compensation_that_cannot_complete_fails_the_saga() {
    // non-retryable: at once
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.fail(false);
    let effects = h.fail(false);
    assert_eq!(
        types(&effects),
        ["persist", "compensation_failed", "saga_failed", "finish"]
    );
    let p = h.last_event_payload(EventType::SagaFailed);
    assert_eq!(p["failed_step"], json!("plan"));
    assert_eq!(p["compensation"], json!("allocate"));
    assert_eq!(p["error"], json!("boom"));
    assert_eq!(h.status(), SagaStatus::Failed);

    // retryable: after its own retry policy (2 attempts)
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.fail(false);
    h.fail(true);
    assert_eq!(
        h.last_event_payload(EventType::CompensationRetrying),
        json!({"attempt": 2, "delay_ms": 50})
    );
    h.tick_at(h.deadline());
    let d = h.deadline();
    let effects = h.tick_at(d);
    assert_eq!(
        types(&effects),
        ["persist", "compensation_timed_out", "saga_failed", "finish"]
    );
}

#[test]
fn an_input_that_cannot_be_built_fails_the_step_and_unwinds() {
    let (mut h, _) = Harness::new();
    let effects = h.complete(json!({"no_robot_ids": true}));
    assert_eq!(
        types(&effects),
        [
            "persist",
            "step_completed",
            "step_failed",
            "compensation_started",
            "send release#1",
            "timer"
        ]
    );
    let p = h.last_event_payload(EventType::StepFailed);
    assert!(
        p["error"]
            .as_str()
            .unwrap()
            .contains("${steps.allocate.result.robot_ids}"),
        "{p}"
    );
    assert_eq!(p["retryable"], json!(false));
}

#[test]
fn events_carry_the_status_after_them() {
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.fail(false);
    h.complete(json!({}));
    let statuses: Vec<(EventType, SagaStatus)> =
        h.events().into_iter().map(|(t, _, s)| (t, s)).collect();
    use EventType::*;
    use SagaStatus::*;
    assert_eq!(
        statuses,
        [
            (SagaStarted, Running),
            (StepStarted, Running),
            (StepCompleted, Running),
            (StepStarted, Running),
            (StepFailed, Compensating),
            (CompensationStarted, Compensating),
            (CompensationCompleted, Compensating),
            (SagaCompensated, Compensated),
        ]
    );
}

#[test]
fn state_survives_a_round_trip_through_json() {
    let (mut h, _) = Harness::new();
    h.fail(true);
    let text = serde_json::to_string(&h.state).unwrap();
    let back: SagaState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, h.state);
}

#[test]
fn per_request_steps_get_a_reply_stream_of_their_own() {
    let text = DEF.replace(
        "    stream: routing:commands\n",
        "    stream: routing:commands\n    reply_stream: per_request\n",
    );
    let def = load_str(Path::new("mission.yaml"), &text).unwrap();
    let (mut h, _) = Harness::new();
    h.def = def;
    let effects = h.complete(json!({"robot_ids": ["r1"]}));
    let Some(Effect::Send { command, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("no command")
    };
    let own = format!("saga:replies:test:{}", command.request_id);
    assert_eq!(command.reply_stream, own);
    assert_eq!(h.current().reply_stream, own);
    // shared steps keep the saga's stream
    let (h, effects) = Harness::new();
    let Effect::Send { command, .. } = &effects[2] else {
        unreachable!()
    };
    assert_eq!(command.reply_stream, "saga:replies:test");
    assert_eq!(h.current().reply_stream, "saga:replies:test");
}

fn operator(action: Action) -> Event {
    Event::Operator(OperatorRequest {
        action,
        by: "ops@host".into(),
        reason: "because".into(),
        unproven: None,
    })
}

#[test]
fn a_cancelled_saga_undoes_its_steps_and_the_one_under_way() {
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    let effects = h.apply(operator(Action::Cancel));
    assert_eq!(
        types(&effects),
        [
            "persist",
            "operator_action",
            "compensation_started",
            "send cancel_route#1",
            "timer"
        ]
    );
    let p = h.last_event_payload(EventType::OperatorAction);
    assert_eq!(
        p,
        json!({"action": "cancel", "by": "ops@host", "reason": "because", "verified": true})
    );
    assert_eq!(h.status(), SagaStatus::Compensating);
    assert_eq!(
        h.state.failure().unwrap().reason,
        "cancelled by ops@host: because"
    );
    // A late reply of the cancelled attempt changes nothing.
    let stale = h.state.work.exchanges().next().map(|(_, x)| x.clone());
    h.complete(json!({}));
    h.complete(json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(h.undone(), ["plan", "allocate"]);
    assert!(stale.is_some());
    // The cancel is a fact of the record and of the end event, not only
    // words of the reason, which a handler's error could imitate.
    let failure = h.state.failure().unwrap();
    assert_eq!(failure.cancelled_by.as_deref(), Some("ops@host"));
    let end = h.last_event_payload(EventType::SagaCompensated);
    assert_eq!(end["cancelled_by"], "ops@host");
    let (mut h, _) = Harness::new();
    h.reply(ReplyStatus::Failed {
        error: "cancelled by ops@host: forged".into(),
        retryable: false,
    });
    assert!(h
        .last_event_payload(EventType::SagaCompensated)
        .get("cancelled_by")
        .is_none());
    assert!(h.state.failure().unwrap().cancelled_by.is_none());

    // Compensating already: refused, recorded.
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.fail(false);
    let effects = h.apply(operator(Action::Cancel));
    assert_eq!(types(&effects), ["operator_action"]);
    let p = h.last_event_payload(EventType::OperatorAction);
    assert!(p["refused"].as_str().unwrap().contains("compensating"));
}

/// A saga stuck: plan failed, then allocate's compensation failed for good.
fn stuck() -> Harness {
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.fail(false);
    h.fail(false);
    assert_eq!(h.status(), SagaStatus::Failed);
    assert_eq!(
        h.state.stuck().map(|(u, _)| u.step).collect::<Vec<_>>(),
        [0]
    );
    h
}

#[test]
fn a_stuck_saga_is_retried_skipped_or_abandoned() {
    let mut h = stuck();
    let effects = h.apply(operator(Action::Retry));
    assert_eq!(
        types(&effects),
        [
            "persist",
            "operator_action",
            "compensation_started",
            "send release#1",
            "timer"
        ]
    );
    assert_eq!((h.status(), h.state.rescues), (SagaStatus::Compensating, 1));
    h.complete(json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(h.undone(), ["allocate"]);

    let mut h = stuck();
    let effects = h.apply(operator(Action::Skip {
        step: "plan".into(),
    }));
    assert_eq!(
        types(&effects),
        ["operator_action"],
        "the wrong step is refused"
    );
    let effects = h.apply(operator(Action::Skip {
        step: "allocate".into(),
    }));
    assert_eq!(
        types(&effects),
        ["persist", "operator_action", "saga_compensated", "finish"]
    );
    assert_eq!(
        h.last_event_payload(EventType::SagaCompensated)["skipped"],
        json!(["allocate"])
    );

    let mut h = stuck();
    let effects = h.apply(operator(Action::Abandon));
    assert_eq!(types(&effects), ["persist", "operator_action", "finish"]);
    assert!(h.state.abandoned_by().is_some() && h.status() == SagaStatus::Failed);
    let effects = h.apply(operator(Action::Retry));
    assert_eq!(types(&effects), ["operator_action"], "abandoned: refused");
}

#[test]
fn a_parked_saga_is_retried_with_the_reply_it_could_not_record() {
    let (mut h, _) = Harness::new();
    // The last state written: awaiting allocate's reply. Its completion
    // could not be written (say the next step's stream is the wrong kind).
    let written = h.state.clone();
    let request = h.current_request();
    h.complete(json!({"robot_ids": ["r1"]}));
    let completed = Reply {
        saga_id: Some(h.state.saga_id.clone()),
        request_id: Some(request),
        event_type: None,
        correlation_id: None,
        traceparent: None,
        status: ReplyStatus::Completed {
            result: json!({"robot_ids": ["r1"]}),
        },
        timestamp_ms: None,
        reached_ms: None,
    };
    h.state = written;
    let effects = park(
        &mut h.state,
        &h.def,
        "a transition cannot be written".into(),
        vec![completed],
        h.now,
        &mut h.ids,
    )
    .expect("a running saga is parked")
    .effects;
    h.log.extend(effects.clone());
    assert_eq!(h.status(), SagaStatus::Failed);
    assert!(effects.contains(&Effect::Finish));
    let failed = h.last_event_payload(EventType::SagaFailed);
    assert_eq!(failed["parked"], true);
    assert_eq!(failed["failed_step"], "allocate");
    // Parked sagas are not skipped by hand: retried or abandoned.
    h.apply(operator(Action::Skip {
        step: "allocate".into(),
    }));
    assert!(h.last_event_payload(EventType::OperatorAction)["refused"].is_string());
    // Retried: allocate's reply is applied, not sent again.
    let effects = h.apply(operator(Action::Retry));
    assert_eq!(h.status(), SagaStatus::Running);
    assert!(h.state.parked().is_none());
    assert_eq!(
        h.state.results["allocate"].text(),
        r#"{"robot_ids":["r1"]}"#
    );
    let sent: Vec<&str> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { command, .. } => Some(command.step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sent, ["plan"], "the next step, not allocate again");
    // The record round-trips with its parked replies.
    let encoded = serde_json::to_string(&h.state).unwrap();
    let back: SagaState = serde_json::from_str(&encoded).unwrap();
    assert_eq!(back, h.state);
}

#[test]
fn a_reply_that_reached_redis_after_the_deadline_is_late_whenever_it_is_read() {
    let (mut h, _) = Harness::new();
    let deadline = h.deadline();
    let late = |h: &Harness, reached_ms| Reply {
        saga_id: Some(h.state.saga_id.clone()),
        request_id: Some(h.current_request()),
        event_type: None,
        correlation_id: None,
        traceparent: None,
        status: ReplyStatus::Completed { result: json!({}) },
        timestamp_ms: None,
        reached_ms: Some(reached_ms),
    };
    // Read before the timeout is processed (held while the stream was
    // read): still late.
    let reply = late(&h, deadline + 1);
    assert!(h.apply(Event::Reply(reply)).is_empty());
    assert!(h.state.results.is_empty());
    // One that reached Redis in time wins, however late it is read.
    h.now = deadline + 5_000;
    let reply = late(&h, deadline);
    h.apply(Event::Reply(reply));
    assert!(h.state.results.contains_key("allocate"));
}

// The ack and heartbeat clocks.

const CLOCKS: &str = "\
name: long
steps:
  - name: allocate
    stream: resources:commands
    timeout: 1h
    ack_timeout: 2s
    heartbeat_timeout: 10s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 100ms }
    compensation: { command: release, timeout: 5s, ack_timeout: 1s }
  - name: explore
    stream: exploration:commands
    timeout: 1h
    heartbeat_timeout: 30s
";

#[test]
fn commands_carry_their_clocks_and_wake_at_the_earliest() {
    let (h, effects) = Harness::with(CLOCKS);
    let Some(Effect::Send { command, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("no command sent");
    };
    assert_eq!(command.ack_timeout_ms, Some(2_000));
    assert_eq!(command.heartbeat_timeout_ms, Some(10_000));
    let fields = command.to_fields();
    assert!(fields.contains(&("ack_timeout_ms", "2000".into())));
    assert!(fields.contains(&("heartbeat_timeout_ms", "10000".into())));
    // The ack clock runs out first.
    assert_eq!(h.deadline(), 1_000 + 2_000);
    let started = h.last_event_payload(EventType::StepStarted);
    assert_eq!(started["ack_timeout_ms"], 2_000);
    assert_eq!(started["heartbeat_timeout_ms"], 10_000);
    // Steps without the clocks send neither field: handlers of the first
    // form of the contract see what they always saw.
    let (plain, effects) = Harness::new();
    let Some(Effect::Send { command, .. }) =
        effects.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("no command sent");
    };
    assert!(!command
        .to_fields()
        .iter()
        .any(|(k, _)| k.ends_with("_timeout_ms")));
    assert_eq!(plain.deadline(), 1_000 + 1_000);
}

#[test]
fn no_reply_within_the_ack_timeout_times_the_attempt_out_and_retries() {
    let (mut h, _) = Harness::with(CLOCKS);
    assert!(h.tick_at(2_999).is_empty());
    let effects = h.tick_at(3_000);
    assert_eq!(
        types(&effects),
        ["persist", "step_timed_out", "step_retrying", "timer"]
    );
    let timed_out = h.last_event_payload(EventType::StepTimedOut);
    assert_eq!(timed_out["timeout"], "ack");
    assert_eq!(timed_out["attempt"], 1);
    // The next attempt gets its clocks anew.
    h.tick_at(3_100);
    assert_eq!(h.current_attempt(), 2);
    assert_eq!(h.deadline(), 3_100 + 2_000);
}

#[test]
fn a_start_reply_stops_the_ack_clock_and_is_persisted() {
    let (mut h, _) = Harness::with(CLOCKS);
    h.now = 1_500;
    let effects = h.reply_reached(ReplyStatus::Start, Some(1_400));
    // No event, but the state changed: written, and the timer moves to
    // the heartbeat clock (not moved by a reply so soon after the command:
    // it would move by less than a tenth).
    assert_eq!(types(&effects), ["persist", "timer"]);
    assert_eq!(h.deadline(), 1_000 + 10_000);
    assert!(h.tick_at(3_000).is_empty());
}

#[test]
fn heartbeats_and_progress_keep_a_long_attempt_alive_and_silence_ends_it() {
    let (mut h, _) = Harness::with(CLOCKS);
    h.reply_reached(ReplyStatus::Start, Some(1_000));
    // Ten minutes of heartbeats, every 5 s.
    for at in (6_000..600_000).step_by(5_000) {
        h.now = at;
        let effects = h.reply_reached(ReplyStatus::Heartbeat, Some(at));
        assert_eq!(
            types(&effects),
            ["persist", "timer"],
            "a heartbeat writes no event"
        );
        assert!(h.tick_at(at + 9_999).is_empty(), "alive at {at}");
        h.now = at;
    }
    h.now = 600_000;
    let effects = h.reply_reached(
        ReplyStatus::Progress {
            percent: Some(40.0),
            details: Value::Null,
        },
        Some(600_000),
    );
    assert_eq!(types(&effects), ["persist", "step_progress", "timer"]);
    assert_eq!(h.deadline(), 610_000);
    // Then silence: the handler is gone.
    let effects = h.tick_at(610_000);
    assert_eq!(
        types(&effects),
        ["persist", "step_timed_out", "step_retrying", "timer"]
    );
    assert_eq!(
        h.last_event_payload(EventType::StepTimedOut)["timeout"],
        "heartbeat"
    );
}

#[test]
fn a_heartbeat_that_reached_redis_after_the_clock_ran_out_is_late() {
    let (mut h, _) = Harness::with(CLOCKS);
    h.reply_reached(ReplyStatus::Start, Some(1_000));
    // Read late (the reader lagged), after the heartbeat clock ran out.
    h.now = 20_000;
    assert!(h
        .reply_reached(ReplyStatus::Heartbeat, Some(11_001))
        .is_empty());
    assert!(h
        .reply_reached(ReplyStatus::Completed { result: json!({}) }, Some(11_001))
        .is_empty());
    assert!(h.state.results.is_empty());
    let effects = h.tick_at(20_000);
    assert!(types(&effects).contains(&"step_timed_out".to_owned()));
    // One that reached Redis in time still counts, however late it is read.
    let (mut h, _) = Harness::with(CLOCKS);
    h.reply_reached(ReplyStatus::Start, Some(1_000));
    h.now = 20_000;
    h.reply_reached(ReplyStatus::Heartbeat, Some(11_000));
    assert_eq!(h.deadline(), 21_000);
}

#[test]
fn an_attempt_lost_to_its_ack_or_heartbeat_clock_is_undone() {
    // Its effect is unknown, as with any timeout: it is compensated.
    let (mut h, _) = Harness::with(CLOCKS);
    h.tick_at(3_000);
    h.tick_at(3_100);
    h.tick_at(5_100);
    assert_eq!(h.status(), SagaStatus::Compensating);
    let sent = h.sent();
    assert_eq!(
        sent.last().unwrap(),
        &("release".to_owned(), CommandKind::Compensation, 1)
    );
    // The compensation's own clocks: an ack timeout of 1 s, no heartbeat.
    assert_eq!(h.deadline(), 5_100 + 1_000);
    let effects = h.tick_at(6_100);
    assert!(types(&effects).contains(&"compensation_timed_out".to_owned()));
    assert_eq!(
        h.last_event_payload(EventType::CompensationTimedOut)["timeout"],
        "ack"
    );
}

#[test]
fn a_completion_timeout_names_its_clock() {
    let (mut h, _) = Harness::new();
    let deadline = h.deadline();
    h.tick_at(deadline);
    assert_eq!(
        h.last_event_payload(EventType::StepTimedOut)["timeout"],
        "completion"
    );
}

#[test]
fn a_flood_of_replies_moves_the_heartbeat_clock_a_tenth_at_a_time() {
    let (mut h, _) = Harness::with(CLOCKS);
    h.reply_reached(ReplyStatus::Start, Some(1_000));
    // A thousand heartbeats a millisecond apart: the clock (10 s) moves
    // only when it would move by a second or more.
    let mut writes = 0;
    for at in 1_001..2_001 {
        h.now = at;
        let effects = h.reply_reached(ReplyStatus::Heartbeat, Some(at));
        writes += usize::from(types(&effects).contains(&"persist".to_owned()));
    }
    assert_eq!(writes, 1, "one move, at 2000");
    assert_eq!(h.deadline(), 2_000 + 10_000);
    // The SDK's pace, a third of the clock: every beat moves it.
    for at in [5_400, 8_800, 12_200] {
        h.now = at;
        let effects = h.reply_reached(ReplyStatus::Heartbeat, Some(at));
        assert_eq!(types(&effects), ["persist", "timer"]);
        assert_eq!(h.deadline(), at + 10_000);
    }
}

/// The clock of the one exchange under way: its deadline.
fn deadline_of(h: &Harness) -> u64 {
    match h.current().waiting {
        Waiting::Reply { deadline_ms, .. } => deadline_ms,
        Waiting::Backoff { until_ms } => until_ms,
    }
}

#[test]
fn a_paused_saga_finishes_what_is_under_way_and_starts_nothing_until_resumed() {
    let (mut h, _) = Harness::new();
    h.now = 1_200;
    let fx = h.apply(operator(Action::Pause));
    assert_eq!(types(&fx), ["persist", "operator_action"]);
    assert_eq!(h.state.paused.as_ref().unwrap().since_ms, 1_200);
    assert_eq!(h.state.wake_at(), None, "no clock runs");
    // Twice: refused, recorded.
    let fx = h.apply(operator(Action::Pause));
    assert_eq!(types(&fx), ["operator_action"]);
    assert!(h.last_event_payload(EventType::OperatorAction)["refused"]
        .as_str()
        .unwrap()
        .contains("paused already"));
    // Long past the step's 1 s timeout: nothing fires.
    let fx = h.tick_at(60_000);
    assert!(fx.is_empty(), "{:?}", types(&fx));
    // The step under way completes (its reply reached Redis during the
    // pause, after its first deadline: not late, the clock stood still),
    // and the next is not sent.
    let fx = h.reply_reached(
        ReplyStatus::Completed {
            result: json!({"robot_ids": ["r1"]}),
        },
        Some(30_000),
    );
    assert_eq!(types(&fx), ["persist", "step_completed"]);
    assert!(h.state.work.exchanges().next().is_none());
    // Resumed: the next step starts now.
    h.now = 61_000;
    let fx = h.apply(operator(Action::Resume));
    assert_eq!(
        types(&fx),
        [
            "persist",
            "operator_action",
            "step_started",
            "send plan_route#1",
            "timer"
        ]
    );
    assert!(h.state.paused.is_none());
    assert_eq!(deadline_of(&h), 61_000 + 2_000);
    // Not paused: resume is refused.
    let fx = h.apply(operator(Action::Resume));
    assert_eq!(types(&fx), ["operator_action"]);
    assert!(h.last_event_payload(EventType::OperatorAction)["refused"]
        .as_str()
        .unwrap()
        .contains("not paused"));
}

#[test]
fn resuming_moves_every_clock_on_by_the_time_paused() {
    let (mut h, _) = Harness::new();
    let sent = deadline_of(&h);
    assert_eq!(sent, 1_000 + 1_000);
    // Paused 300 ms into the attempt, for 10 s.
    h.now = 1_300;
    h.apply(operator(Action::Pause));
    h.now = 11_300;
    h.apply(operator(Action::Resume));
    assert_eq!(deadline_of(&h), sent + 10_000, "the 700 ms left are left");
    assert!(h.tick_at(11_999).is_empty());
    let fx = h.tick_at(12_000);
    assert!(
        types(&fx).contains(&"step_timed_out".to_owned()),
        "{:?}",
        types(&fx)
    );
    // A backoff too: the retry is sent when the time left of it has run.
    let until = deadline_of(&h);
    h.now = until - 50;
    h.apply(operator(Action::Pause));
    assert!(h.tick_at(until + 5_000).is_empty());
    h.now = until + 5_000;
    h.apply(operator(Action::Resume));
    assert!(h.tick_at(until + 5_049).is_empty());
    let fx = h.tick_at(until + 5_050);
    assert!(
        types(&fx).contains(&"send allocate#2".to_owned()),
        "{:?}",
        types(&fx)
    );
}

#[test]
fn a_reply_late_before_the_pause_is_still_late() {
    let (mut h, _) = Harness::new();
    let due = deadline_of(&h);
    // The clock ran out, the tick has not been seen, then a pause.
    h.now = due + 100;
    h.apply(operator(Action::Pause));
    let fx = h.reply_reached(ReplyStatus::Completed { result: json!({}) }, Some(due + 50));
    assert!(fx.is_empty(), "late: the timeout wins");
}

#[test]
fn a_paused_saga_that_fails_or_is_cancelled_unwinds_once_resumed() {
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.apply(operator(Action::Pause));
    // Its step fails for good while paused: compensating, but nothing sent.
    let fx = h.fail(false);
    assert_eq!(types(&fx), ["persist", "step_failed"]);
    assert_eq!(h.status(), SagaStatus::Compensating);
    assert!(h.state.work.exchanges().next().is_none());
    let fx = h.apply(operator(Action::Resume));
    assert_eq!(
        types(&fx),
        [
            "persist",
            "operator_action",
            "compensation_started",
            "send release#1",
            "timer"
        ]
    );
    // Cancelled while paused: stays paused, compensates once resumed.
    let (mut h, _) = Harness::new();
    h.complete_steps(1);
    h.apply(operator(Action::Pause));
    let fx = h.apply(operator(Action::Cancel));
    assert_eq!(types(&fx), ["persist", "operator_action"]);
    assert!(h.state.paused.is_some());
    let fx = h.apply(operator(Action::Resume));
    assert!(
        types(&fx).contains(&"send cancel_route#1".to_owned()),
        "{:?}",
        types(&fx)
    );
}

#[test]
fn a_saga_that_ends_while_paused_is_paused_no_more_and_an_ended_one_cannot_be_paused() {
    let (mut h, _) = Harness::new();
    h.complete_steps(3);
    h.apply(operator(Action::Pause));
    let fx = h.complete(json!({}));
    assert_eq!(h.status(), SagaStatus::Completed);
    assert!(types(&fx).contains(&"finish".to_owned()));
    assert!(h.state.paused.is_none());
    let fx = h.apply(operator(Action::Pause));
    assert_eq!(types(&fx), ["operator_action"]);
    assert!(h.last_event_payload(EventType::OperatorAction)["refused"]
        .as_str()
        .unwrap()
        .contains("only a running or compensating saga"));
    // A paused saga's state reads back as it was written.
    let (mut h, _) = Harness::new();
    h.apply(operator(Action::Pause));
    let text = serde_json::to_string(&h.state).unwrap();
    let back: SagaState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, h.state);
}
