//! Semantic locks and `wait` steps: what the saga asks for, how answers
//! move it, and when it lets go of its locks.

use super::*;
use crate::protocol::signal::KeptSignal;

/// `allocate` locks the area, `explore` each robot (a fan-out), `approve`
/// waits for a signal, `integrate` reads it.
const LOCKED: &str = "\
name: locked
steps:
  - name: allocate
    stream: resources:commands
    locks: ['area:${input.area}']
    lock_timeout: 5s
    compensation: { command: release }
  - name: explore
    stream: exploration:commands
    for_each: ${steps.allocate.result.robots}
    locks: ['robot:${item}', 'area:${input.area}']
    lock_timeout: 2s
    compensation: { command: abort }
  - name: approve
    kind: wait
    signal: approved
    timeout: 10s
  - name: integrate
    stream: mapping:commands
    input: { ok: '${steps.approve.result.ok}', by: '${steps.approve.result.by}' }
    compensation: { command: discard }
";

const ALLOCATE: usize = 0;
const EXPLORE: usize = 1;
const APPROVE: usize = 2;

fn held(name: &str) -> Event {
    Event::Lock(LockAnswer {
        name: name.into(),
        outcome: LockOutcome::Held,
    })
}

fn queued(name: &str, ahead: usize, holder: &str) -> Event {
    Event::Lock(LockAnswer {
        name: name.into(),
        outcome: LockOutcome::Queued {
            ahead,
            holder: Some(holder.into()),
        },
    })
}

fn signal(name: &str, id: &str, payload: Value, received_ms: u64) -> Event {
    Event::Signal(KeptSignal {
        name: name.into(),
        signal_id: id.into(),
        payload,
        by: Some("ana".into()),
        received_ms,
    })
}

/// The saga `locked` started on area `north`.
fn locked() -> (Harness, Fx) {
    // The harness's own input has no area: started again with one.
    let (mut h, _) = Harness::with(LOCKED);
    let def = h.def.clone();
    let init = SagaInit {
        saga_id: h.state.saga_id.clone(),
        correlation_id: h.state.correlation_id.clone(),
        trace_id: h.state.trace_id.clone(),
        parent_span_id: None,
        reply_stream: h.state.reply_stream.clone(),
        input: json!({ "area": "north" }),
    };
    let (state, started) = start(&def, init, h.now, &mut h.ids);
    h.state = state;
    (h, Fx::of(Ok(started)))
}

fn asks(h: &Harness) -> Vec<Ask> {
    h.state.asks()
}

fn lock_ask(name: &str, step: usize) -> Ask {
    Ask::Lock {
        name: name.into(),
        step,
    }
}

/// The saga holding the area, `allocate` completed with two robots, and
/// `explore` asking for its locks.
fn exploring() -> Harness {
    let (mut h, _) = locked();
    h.apply(held("area:north"));
    h.at(h.now + 10);
    h.finish(Unit::step(ALLOCATE), json!({ "robots": ["r2", "r1"] }));
    h
}

#[test]
fn a_step_sends_nothing_before_it_holds_its_locks() {
    let (mut h, fx) = locked();
    assert_eq!(said(&fx), ["persist", "saga_started", "timer"]);
    assert_eq!(asks(&h), [lock_ask("area:north", ALLOCATE)]);
    // Someone else holds it: the saga says so once, and waits.
    let fx = h.apply(queued("area:north", 1, "other"));
    assert_eq!(said(&fx), ["persist", "lock_waiting allocate", "timer"]);
    let waiting = event_payload(&fx, EventType::LockWaiting, "allocate");
    assert_eq!(waiting["holder"], "other");
    assert_eq!(waiting["ahead"], 1);
    assert!(h.apply(queued("area:north", 1, "other")).is_empty());
    assert!(h.apply(held("elsewhere")).is_empty(), "not asked for");
    h.at(h.now + 300);
    let fx = h.apply(held("area:north"));
    assert_eq!(
        said(&fx),
        [
            "persist",
            "lock_acquired allocate",
            "step_started allocate",
            "send allocate#1 allocate",
            "timer"
        ]
    );
    assert_eq!(
        event_payload(&fx, EventType::LockAcquired, "allocate")["waited_ms"],
        300
    );
    assert!(asks(&h).is_empty());
    assert_eq!(h.state.locks["area:north"].step, "allocate");
}

#[test]
fn a_fan_out_takes_every_branch_lock_in_name_order_and_reuses_what_it_holds() {
    let mut h = exploring();
    // The area is held already (from allocate): not asked again. The
    // robots in the order of their names, whatever the list's order.
    assert_eq!(asks(&h), [lock_ask("robot:r1", EXPLORE)]);
    assert!(h.acting().is_empty());
    let fx = h.apply(held("robot:r1"));
    assert!(!is_send(&fx));
    assert_eq!(asks(&h), [lock_ask("robot:r2", EXPLORE)]);
    let fx = h.apply(held("robot:r2"));
    assert_eq!(
        sends(&fx),
        ["send explore#1 explore[0]", "send explore#1 explore[1]"]
    );
    let names: Vec<&str> = h.state.locks.keys().map(String::as_str).collect();
    assert_eq!(names, ["area:north", "robot:r1", "robot:r2"]);
}

#[test]
fn the_saga_lets_go_of_its_locks_once_when_it_completes() {
    let mut h = exploring();
    h.apply(held("robot:r1"));
    h.apply(held("robot:r2"));
    h.finish(branch(EXPLORE, 0), json!(1));
    h.finish(branch(EXPLORE, 1), json!(2));
    assert_eq!(
        asks(&h),
        [Ask::Signal {
            name: "approved".into()
        }]
    );
    let fx = h.apply(signal(
        "approved",
        "s1",
        json!({ "ok": true, "by": "ana" }),
        h.now,
    ));
    assert_eq!(
        payload_sent(&fx, "integrate#1 integrate"),
        json!({ "ok": true, "by": "ana" })
    );
    let fx = h.finish(Unit::step(3), json!({}));
    let unlocks: Vec<&Effect> = fx
        .iter()
        .filter(|e| matches!(e, Effect::Unlock { .. }))
        .collect();
    assert_eq!(
        unlocks,
        [&Effect::Unlock {
            locks: vec!["area:north".into(), "robot:r1".into(), "robot:r2".into()]
        }]
    );
    assert!(said(&fx).contains(&"locks_released".to_owned()));
    assert!(h.state.locks.is_empty());
    assert_eq!(h.status(), SagaStatus::Completed);
}

#[test]
fn a_lock_not_taken_in_time_fails_the_step_and_the_saga_unwinds_then_lets_go() {
    let mut h = exploring();
    h.apply(queued("robot:r1", 0, "other"));
    let deadline = h.state.wake_at().unwrap();
    h.at(deadline);
    let fx = h.apply(Event::Tick);
    let lines = said(&fx);
    // It leaves the queue it waited in; allocate is undone.
    assert!(lines.contains(&"unlock robot:r1".to_owned()), "{lines:?}");
    assert!(
        lines.contains(&"send release#1 allocate".to_owned()),
        "{lines:?}"
    );
    let failure = h.state.failure().unwrap();
    assert!(
        failure.reason.contains(
            "could not take lock `robot:r1` within its lock_timeout of 2s: saga other holds it"
        ),
        "{}",
        failure.reason
    );
    assert!(asks(&h).is_empty());
    // Held until compensation ends, then let go of.
    assert_eq!(h.state.locks.len(), 1);
    let fx = h.finish(Unit::step(ALLOCATE), json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert!(fx.contains(&Effect::Unlock {
        locks: vec!["area:north".into()]
    }));
}

#[test]
fn a_saga_cancelled_while_it_waits_for_a_lock_leaves_the_queue() {
    let mut h = exploring();
    h.apply(held("robot:r1"));
    let fx = h.apply(super::super::operator(Action::Cancel));
    let lines = said(&fx);
    assert!(lines.contains(&"unlock robot:r2".to_owned()), "{lines:?}");
    assert!(asks(&h).is_empty());
    h.finish(Unit::step(ALLOCATE), json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert!(h.state.locks.is_empty());
}

#[test]
fn a_paused_saga_takes_its_locks_but_starts_nothing_until_resumed() {
    let mut h = exploring();
    h.apply(super::super::operator(Action::Pause));
    let fx = h.apply(held("robot:r1"));
    assert!(fx.changed && !is_send(&fx));
    assert_eq!(h.state.wake_at(), None, "no clock runs while paused");
    h.apply(held("robot:r2"));
    assert!(h.acting().is_empty());
    h.at(h.now + 60_000);
    let fx = h.apply(super::super::operator(Action::Resume));
    assert_eq!(sends(&fx).len(), 2, "{:?}", said(&fx));
}

#[test]
fn a_paused_lock_wait_keeps_its_time() {
    let mut h = exploring();
    let deadline = h.state.work.steps[&EXPLORE]
        .locking
        .as_ref()
        .unwrap()
        .deadline_ms;
    h.apply(super::super::operator(Action::Pause));
    h.at(h.now + 60_000);
    h.apply(super::super::operator(Action::Resume));
    let moved = h.state.work.steps[&EXPLORE]
        .locking
        .as_ref()
        .unwrap()
        .deadline_ms;
    assert_eq!(moved, deadline + 60_000);
}

#[test]
fn a_lock_that_can_never_be_had_fails_the_step() {
    let mut h = exploring();
    let fx = h.apply(Event::Lock(LockAnswer {
        name: "robot:r1".into(),
        outcome: LockOutcome::Refused("1024 sagas already hold or wait for lock `robot:r1`".into()),
    }));
    assert!(said(&fx).contains(&"step_failed explore".to_owned()));
    assert_eq!(h.status(), SagaStatus::Compensating);
}

#[test]
fn a_failed_saga_keeps_its_locks_until_abandoned() {
    let (mut h, _) = locked();
    h.apply(held("area:north"));
    h.fail_unit(Unit::step(ALLOCATE), false);
    assert_eq!(h.status(), SagaStatus::Compensated, "nothing to undo");
    assert!(h.state.locks.is_empty());

    let mut h = exploring();
    h.apply(held("robot:r1"));
    h.apply(held("robot:r2"));
    h.fail_unit(branch(EXPLORE, 0), false);
    h.finish(branch(EXPLORE, 1), json!(1));
    h.fail_unit(branch(EXPLORE, 1), false);
    for _ in 0..5 {
        if h.status() != SagaStatus::Compensating {
            break;
        }
        let unit = h.undoing()[0];
        h.fail_unit(unit, false);
    }
    assert_eq!(h.status(), SagaStatus::Failed);
    assert_eq!(h.state.locks.len(), 3, "a stuck saga keeps what it holds");
    let fx = h.apply(super::super::operator(Action::Abandon));
    assert!(fx.contains(&Effect::Unlock {
        locks: vec!["area:north".into(), "robot:r1".into(), "robot:r2".into()]
    }));
    assert!(h.state.locks.is_empty());
}

#[test]
fn a_signal_kept_before_the_wait_is_taken_when_it_starts() {
    let mut h = exploring();
    // No wait under way: a signal is not taken (it stays kept in Redis).
    assert!(h
        .apply(signal("approved", "s1", json!({}), h.now))
        .is_empty());
    h.apply(held("robot:r1"));
    h.apply(held("robot:r2"));
    h.finish(branch(EXPLORE, 0), json!(1));
    let fx = h.finish(branch(EXPLORE, 1), json!(2));
    assert!(said(&fx).contains(&"step_started approve".to_owned()));
    // The daemon asks, finds it kept from earlier, hands it in.
    assert!(h.apply(signal("other", "x", json!({}), h.now)).is_empty());
    let fx = h.apply(signal("approved", "s1", json!({ "ok": 1, "by": "b" }), 5));
    let taken = event_payload(&fx, EventType::StepCompleted, "approve");
    assert_eq!(taken["signal_id"], "s1");
    assert_eq!(taken["by"], "ana");
    assert_eq!(
        h.state.results["approve"].value(),
        json!({ "ok": 1, "by": "b" })
    );
    assert!(is_send(&fx));
}

#[test]
fn a_wait_times_out_and_a_late_signal_loses() {
    let mut h = exploring();
    h.apply(held("robot:r1"));
    h.apply(held("robot:r2"));
    h.finish(branch(EXPLORE, 0), json!(1));
    h.finish(branch(EXPLORE, 1), json!(2));
    let deadline = h.state.wake_at().unwrap();
    // Reached Redis after the deadline: late, even if seen before the tick.
    h.at(deadline + 5);
    assert!(h
        .apply(signal("approved", "s1", json!({}), deadline + 1))
        .is_empty());
    let fx = h.apply(Event::Tick);
    assert!(said(&fx).contains(&"step_failed approve".to_owned()));
    assert!(h
        .state
        .failure()
        .unwrap()
        .reason
        .contains("no signal `approved` within its timeout of 10s"));
    // The robots are undone, then the allocation; then every lock goes.
    assert_eq!(h.undoing().len(), 2);
    assert_eq!(
        h.state.work.get(Unit::step(APPROVE)),
        Some(&UnitState::Ended {
            effect_unknown: false
        })
    );
}

#[test]
fn locks_and_waits_survive_a_round_trip_through_json() {
    let mut h = exploring();
    h.apply(held("robot:r1"));
    h.apply(queued("robot:r2", 2, "other"));
    let text = serde_json::to_string(&h.state).unwrap();
    let back: SagaState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, h.state);
    assert_eq!(back.asks(), [lock_ask("robot:r2", EXPLORE)]);
}

#[test]
fn a_lock_name_that_cannot_be_rendered_fails_the_step() {
    // The harness's input has no `area`.
    let (h, _) = Harness::with(LOCKED);
    assert_eq!(h.status(), SagaStatus::Compensated);
    let reason = &h.state.failure().unwrap().reason;
    assert!(
        reason.contains("cannot take the locks of step `allocate`"),
        "{reason}"
    );
    // A rendered name that is no lock name: a space in it.
    let (h, _) = Harness::with(&LOCKED.replace(
        "'area:${input.area}']\n    lock_timeout: 5s",
        "'area ${input.robots}']\n    lock_timeout: 5s",
    ));
    let reason = &h.state.failure().unwrap().reason;
    assert!(reason.contains("must be 1 to 200"), "{reason}");
}
