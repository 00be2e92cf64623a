//! Steps in parallel and fan-outs: the saga rules for branches, driven
//! without Redis or a clock, mostly as tables of cases.
//!
//! Every event goes through [`Harness::try_apply`], which checks that a
//! transition says it changed the state exactly when it did.

use super::*;
use crate::definition::MAX_BRANCHES;

/// `prepare`, then `visit` once per robot of prepare's result (at most
/// `MAX` at once), then `report`, which reads the gathered results.
const FAN: &str = "\
name: fan
steps:
  - name: prepare
    stream: prep:commands
    compensation: { command: unprepare }
  - name: visit
    stream: visit:commands
    timeout: 1s
    retry: { max_attempts: 2, backoff: fixed, initial_delay: 100ms }
    for_each: ${steps.prepare.result.robots}
    max_concurrency: MAX
    input: { robot: '${item.id}', index: '${index}' }
    compensation: { command: leave, input: { robot: '${item}', index: '${index}' } }
  - name: report
    stream: report:commands
    input: { visits: '${steps.visit.result}' }
";

const PREPARE: usize = 0;
const VISIT: usize = 1;
const REPORT: usize = 2;

fn fan_def(max: Option<u32>) -> String {
    let line = "    max_concurrency: MAX\n";
    match max {
        Some(m) => FAN.replace(line, &format!("    max_concurrency: {m}\n")),
        None => FAN.replace(line, ""),
    }
}

/// `n` robots, `{"id": "r<i>"}`.
fn robots(n: usize) -> Value {
    (0..n).map(|i| json!({ "id": format!("r{i}") })).collect()
}

fn branch(step: usize, b: u32) -> Unit {
    Unit {
        step,
        branch: Some(b),
    }
}

fn visit(b: u32) -> Unit {
    branch(VISIT, b)
}

/// Branch `b`'s result in these tests.
fn visited(b: u32) -> Value {
    json!({ "visited": format!("r{b}") })
}

/// Every order of `0..n`.
fn permutations(n: u32) -> Vec<Vec<u32>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for shorter in permutations(n - 1) {
        for at in 0..=shorter.len() {
            let mut order = shorter.clone();
            order.insert(at, n - 1);
            all.push(order);
        }
    }
    all
}

/// `step` or `step[branch]`.
fn label_of(step: &str, branch: Option<u32>) -> String {
    match branch {
        Some(b) => format!("{step}[{b}]"),
        None => step.to_owned(),
    }
}

/// An effect as a line: `persist` is not one; `step_started visit[1]`,
/// `send leave#1 visit[1]`, `timer`, `finish`.
fn line(effect: &Effect) -> String {
    match effect {
        Effect::Send { command, .. } => format!(
            "send {}#{} {}",
            command.event_type,
            command.attempt,
            label_of(&command.step, command.branch)
        ),
        Effect::Emit(ev) => match &ev.step {
            Some(step) => format!("{} {}", ev.event_type.as_str(), label_of(step, ev.branch)),
            None => ev.event_type.as_str().to_owned(),
        },
        Effect::ArmTimer { .. } => "timer".to_owned(),
        Effect::Finish => "finish".to_owned(),
        Effect::Unlock { locks } => format!("unlock {}", locks.join(",")),
    }
}

/// What one event did, as lines, `persist` first when the state changed.
fn said(fx: &Fx) -> Vec<String> {
    let persist = fx.changed.then(|| "persist".to_owned());
    persist.into_iter().chain(fx.iter().map(line)).collect()
}

/// The commands sent, as lines.
fn sends(effects: &[Effect]) -> Vec<String> {
    let sent = effects.iter().filter(|e| matches!(e, Effect::Send { .. }));
    sent.map(line).collect()
}

/// The command sent for `label` (as in [`line`], without `send `).
fn payload_sent(effects: &[Effect], label: &str) -> Value {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Send { command, .. } if line(e) == format!("send {label}") => {
                Some(command.payload.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no `{label}` sent"))
}

/// The payload of the last event of type `t` about `label`.
fn event_payload(effects: &[Effect], t: EventType, label: &str) -> Value {
    let wanted = format!("{} {label}", t.as_str());
    effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Emit(ev) if line(e) == wanted => Some(ev.payload.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no `{wanted}` event"))
}

fn is_send(fx: &Fx) -> bool {
    fx.iter().any(|e| matches!(e, Effect::Send { .. }))
}

/// Replies and clocks aimed at one unit, whatever its exchange (action or
/// compensation) is now.
impl Harness {
    /// The saga `fan` with `max_concurrency`, `prepare` completed with
    /// these robots; what that completion did.
    fn fan(max: Option<u32>, robots: Value) -> (Self, Fx) {
        let (mut h, _) = Self::with(&fan_def(max));
        h.now += 10;
        let fx = h.finish(Unit::step(PREPARE), json!({ "robots": robots }));
        (h, fx)
    }

    fn label(&self, unit: Unit) -> String {
        label_of(&self.def.steps[unit.step].name, unit.branch)
    }

    fn labels(&self, units: &[Unit]) -> Vec<String> {
        units.iter().map(|u| self.label(*u)).collect()
    }

    fn exchange_of(&self, unit: Unit) -> &Exchange {
        let state = self.state.work.get(unit);
        let x = state.and_then(UnitState::exchange);
        x.unwrap_or_else(|| panic!("{} has no exchange: {state:?}", self.label(unit)))
    }

    fn reply_of(&self, request_id: Option<RequestId>, status: ReplyStatus) -> Reply {
        Reply {
            saga_id: Some(self.state.saga_id.clone()),
            request_id,
            event_type: None,
            correlation_id: None,
            traceparent: None,
            status,
            timestamp_ms: None,
            reached_ms: None,
        }
    }

    /// A reply to the exchange `unit` has under way.
    fn reply_to(&mut self, unit: Unit, status: ReplyStatus) -> Fx {
        let request = self.exchange_of(unit).request_id.clone();
        let reply = self.reply_of(Some(request), status);
        Fx::of(self.try_apply(Event::Reply(reply)))
    }

    fn finish(&mut self, unit: Unit, result: Value) -> Fx {
        self.reply_to(unit, ReplyStatus::Completed { result })
    }

    fn fail_unit(&mut self, unit: Unit, retryable: bool) -> Fx {
        let error = format!("{} broke", self.label(unit));
        self.reply_to(unit, ReplyStatus::Failed { error, retryable })
    }

    /// Moves the clock on to `at`.
    fn at(&mut self, at: u64) {
        assert!(at >= self.now, "time runs forward");
        self.now = at;
    }

    /// The tick at `unit`'s clock: its attempt times out, or its backoff
    /// ends. Nothing else is due then.
    fn clock_of(&mut self, unit: Unit) -> Fx {
        let due = self.exchange_of(unit).waiting.due_ms();
        let others = self.state.work.exchanges();
        let others: Vec<Unit> = (others.filter(|(u, x)| *u != unit && x.waiting.due_ms() <= due))
            .map(|(u, _)| u)
            .collect();
        assert!(others.is_empty(), "also due: {others:?}");
        self.at(due);
        let fx = self.apply(Event::Tick);
        assert!(fx.changed);
        fx
    }

    /// The units awaiting the reply to an action (not backing off).
    fn acting(&self) -> Vec<Unit> {
        self.units_where(
            |s| matches!(s, UnitState::Acting(x) if matches!(x.waiting, Waiting::Reply { .. })),
        )
    }

    /// The units whose compensation is under way.
    fn undoing(&self) -> Vec<Unit> {
        self.units_where(|s| matches!(s, UnitState::Undoing(_)))
    }

    fn units_where(&self, f: impl Fn(&UnitState) -> bool) -> Vec<Unit> {
        let units = self.state.work.units();
        units.filter(|(_, s)| f(s)).map(|(u, _)| u).collect()
    }

    /// Every event emitted so far, as lines.
    fn event_lines(&self) -> Vec<String> {
        let events = self.log.iter().filter(|e| matches!(e, Effect::Emit(_)));
        events.map(line).collect()
    }

    /// Completes compensations until none is under way, the highest unit
    /// first, checking that at most `max` branches of one step are undone
    /// at once.
    fn drain_compensations(&mut self, max: usize) {
        while let Some(&unit) = self.undoing().last() {
            let undoing = self.undoing();
            for step in [PREPARE, VISIT, REPORT] {
                let of_step = undoing.iter().filter(|u| u.step == step).count();
                assert!(of_step <= max, "{undoing:?} undone at once");
            }
            self.at(self.now + 10);
            self.finish(unit, json!({}));
        }
    }
}

// ----------------------------------------------------------- going forward

#[test]
fn branches_completing_in_any_order_gather_results_in_list_order_and_start_the_next_step_once() {
    for n in [2u32, 3] {
        for order in permutations(n) {
            let case = format!("{n} branches completed in the order {order:?}");
            let (mut h, fx) = Harness::fan(None, robots(n as usize));
            let started: Vec<String> = (0..n).map(|b| format!("send visit#1 visit[{b}]")).collect();
            assert_eq!(sends(&fx), started, "{case}: all branches start at once");
            assert_eq!(
                event_payload(&fx, EventType::StepStarted, "visit"),
                json!({ "branches": n, "max_concurrency": n }),
                "{case}"
            );
            for (k, &b) in order.iter().enumerate() {
                let fx = h.finish(visit(b), visited(b));
                let last = k + 1 == order.len();
                let mut expected = vec!["persist".to_owned(), format!("step_completed visit[{b}]")];
                if last {
                    expected.extend(
                        [
                            "step_completed visit",
                            "step_started report",
                            "send report#1 report",
                        ]
                        .map(String::from),
                    );
                }
                expected.push("timer".into());
                assert_eq!(said(&fx), expected, "{case}, after branch {b}");
            }
            let gathered: Value = (0..n).map(visited).collect();
            assert_eq!(h.state.results["visit"].value(), gathered, "{case}");
            assert_eq!(
                event_payload(&h.log, EventType::StepCompleted, "visit"),
                json!({ "branches": n, "result": gathered }),
                "{case}"
            );
            let log_sends = sends(&h.log);
            let reports = log_sends.iter().filter(|s| s.contains("report#"));
            assert_eq!(reports.count(), 1, "{case}: report started once");
            assert_eq!(
                payload_sent(&h.log, "report#1 report"),
                json!({ "visits": gathered }),
                "{case}"
            );
            let fx = h.finish(Unit::step(REPORT), json!("done"));
            assert_eq!(
                said(&fx),
                [
                    "persist",
                    "step_completed report",
                    "saga_completed",
                    "finish"
                ]
            );
            let results = h.last_event_payload(EventType::SagaCompleted)["results"].clone();
            assert_eq!(results["visit"], gathered, "{case}");
        }
    }
}

/// `n` steps that start with the saga, joined by `join`, which reads
/// each one's result.
fn parallel_def(n: usize) -> String {
    let mut text = String::from("name: parallel\nsteps:\n");
    let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    for name in &names {
        text += &format!("  - name: {name}\n    stream: {name}:commands\n    after: []\n");
    }
    let inputs: Vec<String> = (names.iter())
        .map(|p| format!("{p}: '${{steps.{p}.result}}'"))
        .collect();
    text += &format!(
        "  - name: join\n    stream: join:commands\n    after: [{}]\n    input: {{ {} }}\n",
        names.join(", "),
        inputs.join(", ")
    );
    text
}

#[test]
fn every_completion_order_of_parallel_steps_starts_their_join_once_with_every_result() {
    for n in [2u32, 3] {
        for order in permutations(n) {
            let case = format!("{n} parallel steps completed in the order {order:?}");
            let (mut h, fx) = Harness::with(&parallel_def(n as usize));
            let started: Vec<String> = (0..n).map(|i| format!("send p{i}#1 p{i}")).collect();
            assert_eq!(sends(&fx), started, "{case}: they start with the saga");
            for (k, &i) in order.iter().enumerate() {
                let fx = h.finish(Unit::step(i as usize), json!(format!("from p{i}")));
                let last = k + 1 == order.len();
                let joins = sends(&fx);
                assert_eq!(
                    joins.len(),
                    usize::from(last),
                    "{case}, after p{i}: {joins:?}"
                );
            }
            let expected: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!(format!("from p{i}"))))
                .collect();
            assert_eq!(
                payload_sent(&h.log, "join#1 join"),
                Value::Object(expected),
                "{case}"
            );
            let log_sends = sends(&h.log);
            assert_eq!(log_sends.iter().filter(|s| s.contains("join#")).count(), 1);
            h.finish(Unit::step(n as usize), json!({}));
            assert_eq!(h.status(), SagaStatus::Completed, "{case}");
        }
    }
}

/// Every way the running branches of a fan-out may complete, from `h`
/// on: branches start in the order of the list, as many as allowed and
/// never more. Returns how many orders were explored.
fn explore_concurrency(h: &Harness, n: u32, max: usize) -> usize {
    let work = &h.state.work.steps[&VISIT];
    let completed = work.units.iter().filter(|u| u.to_undo()).count();
    let running: Vec<Unit> = h.acting().into_iter().filter(|u| u.step == VISIT).collect();
    let want = max.min(n as usize - completed);
    assert_eq!(running.len(), want, "as many as allowed, never more");
    // Started in the order of the list: the first `started` branches.
    let started: Vec<String> = (h.event_lines().into_iter())
        .filter(|l| l.starts_with("step_started visit["))
        .collect();
    let in_order: Vec<String> = (0..started.len())
        .map(|b| format!("step_started visit[{b}]"))
        .collect();
    assert_eq!(started, in_order);
    assert_eq!(work.units.len(), completed + running.len());
    if running.is_empty() {
        let gathered: Value = (0..n).map(visited).collect();
        assert_eq!(h.state.results["visit"].value(), gathered);
        let log_sends = sends(&h.log);
        assert_eq!(
            log_sends.iter().filter(|s| s.contains("report#")).count(),
            1
        );
        return 1;
    }
    let mut orders = 0;
    for unit in running {
        let mut next = h.clone();
        let fx = next.finish(unit, visited(unit.branch.unwrap()));
        // One branch out, the next one of the list in, if any is left.
        let newly: Vec<String> = (sends(&fx).into_iter())
            .filter(|s| s.starts_with("send visit"))
            .collect();
        let next_branch = work.units.len();
        let expected: Vec<String> = (next_branch < n as usize)
            .then(|| format!("send visit#1 visit[{next_branch}]"))
            .into_iter()
            .collect();
        assert_eq!(newly, expected);
        orders += explore_concurrency(&next, n, max);
    }
    orders
}

#[test]
fn max_concurrency_starts_branches_in_order_and_never_more_at_once() {
    // (max_concurrency, branches, completion orders there are: with m
    // at once, m choices for each of the first n - m completions, then m!)
    let cases = [(1u32, 3u32, 1), (2, 3, 4), (2, 4, 8), (3, 5, 54)];
    for (max, n, orders) in cases {
        let (h, fx) = Harness::fan(Some(max), robots(n as usize));
        let first: Vec<String> = (0..max)
            .map(|b| format!("send visit#1 visit[{b}]"))
            .collect();
        assert_eq!(sends(&fx), first, "max {max}: the first {max} start");
        assert_eq!(
            event_payload(&fx, EventType::StepStarted, "visit"),
            json!({ "branches": n, "max_concurrency": max }),
        );
        let explored = explore_concurrency(&h, n, max as usize);
        assert_eq!(explored, orders, "max {max} of {n}");
    }
    // More than the list: as many as there are.
    let (h, fx) = Harness::fan(Some(5), robots(2));
    assert_eq!(sends(&fx).len(), 2);
    assert_eq!(
        event_payload(&fx, EventType::StepStarted, "visit"),
        json!({ "branches": 2, "max_concurrency": 2 }),
    );
    assert_eq!(explore_concurrency(&h, 2, 5), 2);
}

#[test]
fn an_empty_list_completes_its_step_at_once_with_an_empty_result() {
    for max in [None, Some(1)] {
        let (h, fx) = Harness::fan(max, json!([]));
        assert_eq!(
            said(&fx),
            [
                "persist",
                "step_completed prepare",
                "step_started visit",
                "step_completed visit",
                "step_started report",
                "send report#1 report",
                "timer"
            ]
        );
        assert_eq!(h.state.results["visit"].value(), json!([]));
        assert_eq!(
            event_payload(&fx, EventType::StepCompleted, "visit"),
            json!({ "branches": 0, "result": [] })
        );
        assert_eq!(
            payload_sent(&fx, "report#1 report"),
            json!({ "visits": [] })
        );
    }
}

#[test]
fn a_list_too_long_or_not_a_list_fails_its_step_and_undoes_what_came_before() {
    let too_long: Value = (0..=MAX_BRANCHES).map(|i| json!(i)).collect();
    // (prepare's result, what the reason says)
    let cases = [
        (
            json!({ "robots": too_long }),
            format!(
                "has {} elements, more than the {MAX_BRANCHES} branches",
                MAX_BRANCHES + 1
            ),
        ),
        (json!({ "robots": "r0" }), "is not a list".to_owned()),
        (
            json!({ "robots": { "id": "r0" } }),
            "is not a list".to_owned(),
        ),
        (json!({ "robots": null }), "is not a list".to_owned()),
        (json!({ "nobody": [] }), "robots".to_owned()),
    ];
    for (result, why) in cases {
        let (mut h, _) = Harness::with(&fan_def(Some(2)));
        let fx = h.finish(Unit::step(PREPARE), result.clone());
        assert_eq!(
            said(&fx),
            [
                "persist",
                "step_completed prepare",
                "step_failed visit",
                "compensation_started prepare",
                "send unprepare#1 prepare",
                "timer"
            ],
            "{why}"
        );
        let failed = event_payload(&fx, EventType::StepFailed, "visit");
        let error = failed["error"].as_str().unwrap();
        assert!(
            error.starts_with("cannot take the list of step `visit`: "),
            "{error}"
        );
        assert!(error.contains(&why), "{error} should say {why}");
        assert_eq!(failed["retryable"], false);
        assert!(!h.state.work.steps.contains_key(&VISIT), "no branch of it");
        let failure = h.state.failure().unwrap().clone();
        assert_eq!((failure.step.as_str(), failure.branch), ("visit", None));
        assert_eq!(failure.reason, error);
        h.finish(Unit::step(PREPARE), json!({}));
        assert_eq!(h.status(), SagaStatus::Compensated);
        let end = h.last_event_payload(EventType::SagaCompensated);
        assert_eq!(end["compensated"], json!(["prepare"]));
        assert_eq!(end["failed_step"], "visit");
    }
    // The most a list may hold: every branch starts.
    let (h, fx) = Harness::fan(None, robots(MAX_BRANCHES));
    assert_eq!(sends(&fx).len(), MAX_BRANCHES);
    assert_eq!(h.acting().len(), MAX_BRANCHES);
}

#[test]
fn item_and_index_render_per_branch_in_actions_and_compensations() {
    let (mut h, fx) = Harness::fan(Some(2), robots(3));
    for b in 0..2 {
        assert_eq!(
            payload_sent(&fx, &format!("visit#1 visit[{b}]")),
            json!({ "robot": format!("r{b}"), "index": b })
        );
    }
    let fx = h.finish(visit(0), visited(0));
    assert_eq!(
        payload_sent(&fx, "visit#1 visit[2]"),
        json!({ "robot": "r2", "index": 2 })
    );
    // The events say which element a branch took.
    let started = event_payload(&fx, EventType::StepStarted, "visit[2]");
    assert_eq!(started["item"], json!({ "id": "r2" }));
    // A retry renders it again, the same.
    h.at(h.now + 10);
    h.fail_unit(visit(2), true);
    let fx = h.clock_of(visit(2));
    assert_eq!(
        payload_sent(&fx, "visit#2 visit[2]"),
        json!({ "robot": "r2", "index": 2 })
    );
    // Compensations: `${item}` whole.
    h.finish(visit(2), visited(2));
    let fx = h.fail_unit(visit(1), false);
    for b in [0, 2] {
        assert_eq!(
            payload_sent(&fx, &format!("leave#1 visit[{b}]")),
            json!({ "robot": { "id": format!("r{b}") }, "index": b })
        );
    }
}

#[test]
fn a_step_without_templates_gets_its_item_and_index_in_the_context() {
    let text = fan_def(None).replace(
        "    input: { robot: '${item.id}', index: '${index}' }\n",
        "",
    );
    let (mut h, _) = Harness::with(&text);
    let fx = h.finish(Unit::step(PREPARE), json!({ "robots": robots(2) }));
    let payload = payload_sent(&fx, "visit#1 visit[1]");
    assert_eq!(payload["item"], json!({ "id": "r1" }));
    assert_eq!(payload["index"], 1);
    assert_eq!(payload["steps"]["prepare"]["result"]["robots"], robots(2));
}

// ----------------------------------------------------------------- failure

/// What the other branch under way does around the failure of branch 4.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// After the failure: completes, fails, fails retryably (with
    /// attempts left), times out.
    Completes,
    Fails,
    FailsRetryably,
    TimesOut,
    /// Before the failure: times out, and waits to be tried again.
    BackingOffAfterTimeout,
    /// Before the failure: fails retryably, and waits to be tried again.
    BackingOffAfterFailure,
    /// Before the failure: times out and is tried again; after it, fails.
    TimedOutBeforeThenFails,
}

#[test]
fn a_branch_failing_for_good_stops_new_branches_awaits_the_running_ones_then_undoes() {
    use Fate::*;
    // (fate of branch 3, whether it is undone)
    let cases = [
        (Completes, true),
        (Fails, false),
        (FailsRetryably, false),
        (TimesOut, true),
        (BackingOffAfterTimeout, true),
        (BackingOffAfterFailure, false),
        (TimedOutBeforeThenFails, true),
    ];
    for (fate, undone) in cases {
        let case = format!("{fate:?}");
        // Six robots, two at once: 0 and 1 complete, then 2; 3 (sent at
        // 1200, deadline 2200) and 4 (sent at 1800, deadline 2800) run, 5
        // waits.
        let (mut h, _) = Harness::fan(Some(2), robots(6));
        h.at(1_100);
        h.finish(visit(0), visited(0));
        h.at(1_200);
        h.finish(visit(1), visited(1));
        h.at(1_800);
        h.finish(visit(2), visited(2));
        assert_eq!(h.acting(), [visit(3), visit(4)]);
        match fate {
            BackingOffAfterTimeout => {
                let fx = h.clock_of(visit(3));
                assert!(said(&fx).contains(&"step_retrying visit[3]".to_owned()));
            }
            BackingOffAfterFailure => {
                h.at(1_850);
                h.fail_unit(visit(3), true);
            }
            TimedOutBeforeThenFails => {
                h.clock_of(visit(3));
                let fx = h.clock_of(visit(3));
                assert_eq!(sends(&fx), ["send visit#2 visit[3]"]);
            }
            _ => {}
        }
        // Branch 4 fails for good: nothing new starts.
        h.at(h.now + 50);
        let failed = h.fail_unit(visit(4), false);
        assert_eq!(h.status(), SagaStatus::Compensating, "{case}");
        assert_eq!(h.state.failure().unwrap().branch, Some(4));
        assert_eq!(h.state.failure().unwrap().step, "visit");
        assert!(
            !said(&failed).iter().any(|l| l.contains("visit[5]")),
            "{case}: branch 5 does not start"
        );
        // Branch 3, if still under way, is awaited; its end starts the
        // compensations.
        let ended = match fate {
            Completes => Some(h.finish(visit(3), visited(3))),
            Fails | TimedOutBeforeThenFails => Some(h.fail_unit(visit(3), false)),
            FailsRetryably => Some(h.fail_unit(visit(3), true)),
            TimesOut => Some(h.clock_of(visit(3))),
            BackingOffAfterTimeout | BackingOffAfterFailure => None,
        };
        let starts_undoing = match ended {
            Some(fx) => {
                assert!(!is_send(&failed), "{case}: branch 3 is awaited first");
                let lines = said(&fx);
                assert!(!lines.iter().any(|l| l.contains("retrying")), "{case}");
                fx
            }
            None => failed,
        };
        // The branches to undo, newest first, two at once.
        let first = match undone {
            true => ["send leave#1 visit[3]", "send leave#1 visit[2]"],
            false => ["send leave#1 visit[2]", "send leave#1 visit[1]"],
        };
        assert_eq!(sends(&starts_undoing), first, "{case}");
        // A backoff that would have ended since sends no retry.
        h.at(h.now + 500);
        let tick = h.clone().apply(Event::Tick);
        assert!(tick.is_empty(), "{case}: {tick:?}");
        h.drain_compensations(2);
        assert_eq!(h.status(), SagaStatus::Compensated, "{case}");
        let mut expected = vec!["visit[3]", "visit[2]", "visit[1]", "visit[0]", "prepare"];
        if !undone {
            expected.remove(0);
        }
        assert_eq!(h.undone(), expected, "{case}");
        let end = h.last_event_payload(EventType::SagaCompensated);
        assert_eq!(end["compensated"], json!(expected), "{case}");
        assert_eq!(end["skipped"], json!([]), "{case}");
        // Nothing of the forward path after the failure.
        let actions = sends(&h.log);
        let mut forward: Vec<&str> = (actions.iter())
            .filter(|s| s.starts_with("send visit") || s.starts_with("send report"))
            .map(String::as_str)
            .collect();
        forward.sort();
        let mut expected_forward: Vec<&str> = vec![
            "send visit#1 visit[0]",
            "send visit#1 visit[1]",
            "send visit#1 visit[2]",
            "send visit#1 visit[3]",
            "send visit#1 visit[4]",
        ];
        if matches!(fate, TimedOutBeforeThenFails) {
            expected_forward.push("send visit#2 visit[3]");
        }
        assert_eq!(forward, expected_forward, "{case}");
    }
}

/// `root`, then `a` (1 s) and `b` (2 s) in parallel, joined by `c`.
const JOIN: &str = "\
name: join
steps:
  - name: root
    stream: root:commands
    compensation: { command: unroot }
  - name: a
    stream: a:commands
    after: [root]
    timeout: 1s
    compensation: { command: undo_a }
  - name: b
    stream: b:commands
    after: [root]
    timeout: 2s
    compensation: { command: undo_b }
  - name: c
    stream: c:commands
    after: [a, b]
    timeout: 3s
    compensation: { command: undo_c }
";

#[test]
fn a_timeout_during_a_join_undoes_the_parallel_steps_together_then_what_came_before() {
    let (a, b, c) = (Unit::step(1), Unit::step(2), Unit::step(3));
    #[derive(Debug)]
    enum Before {
        /// `b` completes, then `a` times out.
        BCompletes,
        /// `a` times out while `b` runs; `b` then completes.
        BCompletesAfter,
        /// `a` times out while `b` runs; `b` then fails.
        BFailsAfter,
        /// both complete; the join `c` times out.
        JoinTimesOut,
    }
    // (case, compensations sent together first, undone in the end)
    let cases: [(Before, &[&str], &[&str]); 4] = [
        (
            Before::BCompletes,
            &["send undo_a#1 a", "send undo_b#1 b"],
            &["a", "b", "root"],
        ),
        (
            Before::BCompletesAfter,
            &["send undo_b#1 b", "send undo_a#1 a"],
            &["a", "b", "root"],
        ),
        (Before::BFailsAfter, &["send undo_a#1 a"], &["a", "root"]),
        (
            Before::JoinTimesOut,
            &["send undo_c#1 c"],
            &["c", "a", "b", "root"],
        ),
    ];
    for (case, first, undone) in cases {
        let (mut h, _) = Harness::with(JOIN);
        h.finish(Unit::step(0), json!({}));
        assert_eq!(h.acting(), [a, b]);
        let fx = match case {
            Before::BCompletes => {
                h.finish(b, json!({}));
                h.clock_of(a)
            }
            Before::BCompletesAfter | Before::BFailsAfter => {
                let fx = h.clock_of(a);
                assert_eq!(said(&fx), ["persist", "step_timed_out a", "timer"]);
                match case {
                    Before::BCompletesAfter => h.finish(b, json!({})),
                    _ => h.fail_unit(b, false),
                }
            }
            Before::JoinTimesOut => {
                h.finish(a, json!({}));
                h.finish(b, json!({}));
                h.clock_of(c)
            }
        };
        assert_eq!(sends(&fx), first, "{case:?}");
        // Undone in reverse order of the graph: `root` last, alone.
        let is_join = matches!(case, Before::JoinTimesOut);
        while let Some(&unit) = h.undoing().first() {
            if unit.step == 0 {
                assert_eq!(h.undoing(), [unit], "{case:?}: root waits for a and b");
            }
            let fx = h.finish(unit, json!({}));
            if is_join && unit == c {
                assert_eq!(
                    sends(&fx),
                    ["send undo_b#1 b", "send undo_a#1 a"],
                    "then a and b, together"
                );
            }
        }
        assert_eq!(h.undone(), undone, "{case:?}");
        assert_eq!(h.status(), SagaStatus::Compensated);
        let c_started = h.event_lines().contains(&"step_started c".to_owned());
        assert_eq!(c_started, is_join, "{case:?}");
    }
}

/// `root`, then `a` and beside it a fan-out `f` over root's robots, at
/// most `MAX` at once, joined by `join`.
const BESIDE: &str = "\
name: beside
steps:
  - name: root
    stream: root:commands
    compensation: { command: unroot }
  - name: a
    stream: a:commands
    after: [root]
  - name: f
    stream: f:commands
    after: [root]
    for_each: ${steps.root.result.robots}
    max_concurrency: MAX
    compensation: { command: undo_f }
  - name: join
    stream: join:commands
    after: [a, f]
";

/// A case of [`a_parallel_step_failing_stops_the_fan_out_beside_it`].
struct Beside {
    max_concurrency: u32,
    /// f's branches completed before `a` fails,
    before: &'static [u32],
    /// and after.
    after: &'static [u32],
    /// The compensations started once the last ends, newest first.
    first: &'static [&'static str],
}

#[test]
fn a_parallel_step_failing_stops_the_fan_out_beside_it() {
    let f = |b| branch(2, b);
    let cases = [
        Beside {
            max_concurrency: 1,
            before: &[],
            after: &[0],
            first: &["f[0]"],
        },
        Beside {
            max_concurrency: 1,
            before: &[0],
            after: &[1],
            first: &["f[1]"],
        },
        Beside {
            max_concurrency: 3,
            before: &[1],
            after: &[0, 2],
            first: &["f[2]", "f[0]", "f[1]"],
        },
    ];
    for case in cases {
        let Beside {
            max_concurrency: max,
            before,
            after,
            first,
        } = case;
        let case = format!("max {max}, {before:?} then {after:?}");
        let (mut h, _) = Harness::with(&BESIDE.replace("MAX", &max.to_string()));
        h.finish(Unit::step(0), json!({ "robots": robots(3) }));
        for &b in before {
            h.finish(f(b), json!(b));
        }
        let fx = h.fail_unit(Unit::step(1), false);
        assert!(!is_send(&fx), "{case}: no branch starts: {fx:?}");
        for (k, &b) in after.iter().enumerate() {
            let fx = h.finish(f(b), json!(b));
            let last = k + 1 == after.len();
            assert_eq!(is_send(&fx), last, "{case}: undone once all ended");
            if last {
                let started: Vec<String> =
                    first.iter().map(|u| format!("send undo_f#1 {u}")).collect();
                assert_eq!(sends(&fx), started, "{case}");
            }
        }
        h.drain_compensations(3);
        let mut undone = h.undone();
        assert_eq!(undone.pop().as_deref(), Some("root"), "{case}: root last");
        undone.sort();
        let mut all: Vec<String> = before
            .iter()
            .chain(after)
            .map(|b| format!("f[{b}]"))
            .collect();
        all.sort();
        assert_eq!(undone, all, "{case}");
        assert_eq!(h.status(), SagaStatus::Compensated);
        let started = (h.event_lines().into_iter()).filter(|l| l.starts_with("step_started f["));
        assert_eq!(started.count(), before.len() + after.len(), "{case}");
        assert!(!h.event_lines().contains(&"step_started join".to_owned()));
    }
}

#[test]
fn a_branch_whose_input_cannot_be_built_fails_and_stops_the_fan_out() {
    // The second robot has no `id` for `${item.id}`.
    let list = json!([{ "id": "r0" }, "r1", { "id": "r2" }]);
    // Every branch at once: branch 0 is sent, 1 fails, 2 never starts;
    // 0 is awaited, then undone.
    let (mut h, fx) = Harness::fan(None, list.clone());
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_completed prepare",
            "step_started visit",
            "step_started visit[0]",
            "send visit#1 visit[0]",
            "step_failed visit[1]",
            "timer"
        ]
    );
    let failed = event_payload(&fx, EventType::StepFailed, "visit[1]");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("cannot build the input of step `visit`"),
        "{error}"
    );
    assert_eq!(h.state.failure().unwrap().branch, Some(1));
    let fx = h.finish(visit(0), visited(0));
    assert_eq!(sends(&fx), ["send leave#1 visit[0]"]);
    h.drain_compensations(1);
    assert_eq!(h.undone(), ["visit[0]", "prepare"]);
    // One at a time: branch 1 fails when branch 0 completes, and the
    // unwinding starts in that same transition.
    let (mut h, _) = Harness::fan(Some(1), list);
    let fx = h.finish(visit(0), visited(0));
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_completed visit[0]",
            "step_failed visit[1]",
            "compensation_started visit[0]",
            "send leave#1 visit[0]",
            "timer"
        ]
    );
}

#[test]
fn branches_timing_out_together_are_handled_in_one_tick() {
    // Three branches sent together at 1010; 1 completes, 0 and 2 are
    // both due at 2010.
    let (mut h, _) = Harness::fan(None, robots(3));
    h.finish(visit(1), visited(1));
    h.at(2_010);
    let fx = h.apply(Event::Tick);
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_timed_out visit[0]",
            "step_retrying visit[0]",
            "step_timed_out visit[2]",
            "step_retrying visit[2]",
            "timer"
        ]
    );
    h.at(2_110);
    let fx = h.apply(Event::Tick);
    assert_eq!(
        sends(&fx),
        ["send visit#2 visit[0]", "send visit#2 visit[2]"]
    );
    // Out of attempts together: the first unwinds the saga, the second
    // ends in the same tick; both may have done their work.
    h.at(3_110);
    let fx = h.apply(Event::Tick);
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_timed_out visit[0]",
            "step_timed_out visit[2]",
            "compensation_started visit[2]",
            "send leave#1 visit[2]",
            "compensation_started visit[0]",
            "send leave#1 visit[0]",
            "compensation_started visit[1]",
            "send leave#1 visit[1]",
            "timer"
        ]
    );
    assert_eq!(h.state.failure().unwrap().branch, Some(0));
    h.drain_compensations(3);
    assert_eq!(h.undone(), ["visit[2]", "visit[1]", "visit[0]", "prepare"]);
}

/// `prepare`, three visits completed, and `report` failed: the three
/// branches are being undone at once.
fn unwinding_three_branches() -> Harness {
    let (mut h, _) = Harness::fan(None, robots(3));
    for b in 0..3 {
        h.finish(visit(b), visited(b));
    }
    let fx = h.fail_unit(Unit::step(REPORT), false);
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_failed report",
            "compensation_started visit[2]",
            "send leave#1 visit[2]",
            "compensation_started visit[1]",
            "send leave#1 visit[1]",
            "compensation_started visit[0]",
            "send leave#1 visit[0]",
            "timer"
        ]
    );
    h
}

#[test]
fn a_stuck_branch_compensation_fails_the_saga_once_the_others_are_done_and_is_rescued() {
    // (branches whose compensation fails for good, whether they fail
    // before the others complete)
    let cases: [(&[u32], bool); 4] = [
        (&[1], true),
        (&[1], false),
        (&[0, 2], true),
        (&[0, 2], false),
    ];
    for (stuck, stuck_first) in cases {
        let case = format!("stuck {stuck:?}, first: {stuck_first}");
        // The one a retry starts first, named by `saga_failed`: the stuck
        // one that completed last.
        let first = *stuck.last().unwrap();
        let mut h = unwinding_three_branches();
        let others: Vec<u32> = (0..3).filter(|b| !stuck.contains(b)).collect();
        let mut ends: Vec<(u32, bool)> = Vec::new();
        let fails = stuck.iter().map(|&b| (b, true));
        let completes = others.iter().map(|&b| (b, false));
        match stuck_first {
            true => ends.extend(fails.chain(completes)),
            false => ends.extend(completes.chain(fails)),
        }
        for (k, &(b, fails)) in ends.iter().enumerate() {
            let fx = match fails {
                true => h.fail_unit(visit(b), false),
                false => h.finish(visit(b), json!({})),
            };
            let last = k + 1 == ends.len();
            assert_eq!(
                said(&fx).contains(&format!("saga_failed visit[{}]", first)),
                last,
                "{case}: failed only once the others are done"
            );
            assert!(!is_send(&fx), "{case}: prepare waits for the stuck ones");
        }
        assert_eq!(h.status(), SagaStatus::Failed, "{case}");
        let failed = h.last_event_payload(EventType::SagaFailed);
        assert_eq!(failed["failed_step"], "report", "{case}");
        assert_eq!(failed["compensation"], format!("visit[{}]", first));
        assert_eq!(failed["compensation_command"], "leave");
        let stuck_labels: Vec<String> = stuck.iter().map(|b| format!("visit[{b}]")).collect();
        let listed = if stuck.len() > 1 {
            json!(stuck_labels)
        } else {
            json!(null)
        };
        assert_eq!(failed.get("stuck").cloned().unwrap_or(json!(null)), listed);
        let stuck_units: Vec<Unit> = h.state.stuck().map(|(u, _)| u).collect();
        assert_eq!(h.labels(&stuck_units), stuck_labels, "{case}");

        // Retry: only the stuck compensations are sent again, newest
        // first (they completed in the order of their branches).
        let mut retried = h.clone();
        let fx = retried.apply(operator(Action::Retry));
        let again: Vec<String> = (stuck.iter().rev())
            .map(|b| format!("send leave#1 visit[{b}]"))
            .collect();
        assert_eq!(sends(&fx), again, "{case}");
        assert_eq!(retried.state.rescues, 1);
        for &b in stuck {
            let fx = retried.finish(visit(b), json!({}));
            let then_prepare = b == *stuck.last().unwrap();
            assert_eq!(
                sends(&fx) == ["send unprepare#1 prepare"],
                then_prepare,
                "{case}"
            );
        }
        retried.finish(Unit::step(PREPARE), json!({}));
        assert_eq!(retried.status(), SagaStatus::Compensated, "{case}");
        assert_eq!(retried.undone().last().unwrap(), "prepare");
        assert_eq!(retried.undone().len(), 4);

        // Skip: refused for a step that is not stuck; the stuck branches
        // of `visit` are marked done by hand.
        let mut skipped = h.clone();
        let fx = skipped.apply(operator(Action::Skip {
            step: "prepare".into(),
        }));
        assert_eq!(said(&fx), ["operator_action"], "{case}");
        let fx = skipped.apply(operator(Action::Skip {
            step: "visit".into(),
        }));
        assert_eq!(
            said(&fx),
            [
                "persist".to_owned(),
                // About the step: every stuck branch of it is skipped.
                "operator_action visit".to_owned(),
                "compensation_started prepare".to_owned(),
                "send unprepare#1 prepare".to_owned(),
                "timer".to_owned()
            ],
            "{case}"
        );
        for &b in stuck {
            let state = skipped.state.work.get(visit(b));
            assert_eq!(state, Some(&UnitState::Skipped { by_hand: true }));
        }
        skipped.finish(Unit::step(PREPARE), json!({}));
        assert_eq!(skipped.status(), SagaStatus::Compensated);
        let end = skipped.last_event_payload(EventType::SagaCompensated);
        assert_eq!(end["skipped"], json!(stuck_labels), "{case}");

        // Abandon: failed for good, needing no one.
        let mut abandoned = h.clone();
        let fx = abandoned.apply(operator(Action::Abandon));
        assert_eq!(
            said(&fx),
            [
                "persist".to_owned(),
                format!("operator_action visit[{}]", first),
                "finish".to_owned()
            ]
        );
        assert_eq!(abandoned.state.abandoned_by(), Some("ops@host"));
        assert_eq!(abandoned.status(), SagaStatus::Failed);
    }
}

#[test]
fn a_retry_of_stuck_branches_undoes_them_at_most_max_concurrency_at_once() {
    // Four visits, two at once, all completed; report fails. Each
    // compensation fails for good, freeing its place for the next.
    let (mut h, _) = Harness::fan(Some(2), robots(4));
    for b in 0..4 {
        h.finish(visit(b), visited(b));
    }
    let fx = h.fail_unit(Unit::step(REPORT), false);
    assert_eq!(
        sends(&fx),
        ["send leave#1 visit[3]", "send leave#1 visit[2]"]
    );
    let fx = h.fail_unit(visit(3), false);
    assert_eq!(sends(&fx), ["send leave#1 visit[1]"]);
    let fx = h.fail_unit(visit(2), false);
    assert_eq!(sends(&fx), ["send leave#1 visit[0]"]);
    h.fail_unit(visit(1), false);
    let fx = h.fail_unit(visit(0), false);
    assert!(said(&fx).contains(&"saga_failed visit[3]".to_owned()));
    let failed = h.last_event_payload(EventType::SagaFailed);
    assert_eq!(
        failed["stuck"],
        json!(["visit[0]", "visit[1]", "visit[2]", "visit[3]"])
    );
    // Retried: undone again as when unwinding, two at once, newest first.
    let fx = h.apply(operator(Action::Retry));
    assert_eq!(
        said(&fx),
        [
            "persist",
            "operator_action visit[3]",
            "compensation_started visit[3]",
            "send leave#1 visit[3]",
            "compensation_started visit[2]",
            "send leave#1 visit[2]",
            "timer"
        ]
    );
    assert_eq!(h.state.stuck().count(), 0, "every stuck one is retried");
    h.drain_compensations(2);
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(
        h.undone(),
        ["visit[3]", "visit[2]", "visit[1]", "visit[0]", "prepare"]
    );
}

/// Two chains joined at the end: `x` → `a` and `y` → `b`, then `c`.
const CHAINS: &str = "\
name: chains
steps:
  - name: x
    stream: x:commands
    after: []
    compensation: { command: undo_x }
  - name: a
    stream: a:commands
    after: [x]
    compensation: { command: undo_a }
  - name: y
    stream: y:commands
    after: []
    compensation: { command: undo_y }
  - name: b
    stream: b:commands
    after: [y]
    compensation: { command: undo_b }
  - name: c
    stream: c:commands
    after: [a, b]
";

#[test]
fn a_stuck_compensation_holds_back_only_the_steps_that_wait_for_it() {
    let [x, a, y, b, c] = [0, 1, 2, 3, 4].map(Unit::step);
    let (mut h, _) = Harness::with(CHAINS);
    h.finish(x, json!({}));
    h.finish(y, json!({}));
    h.finish(a, json!({}));
    h.finish(b, json!({}));
    let fx = h.fail_unit(c, false);
    assert_eq!(sends(&fx), ["send undo_b#1 b", "send undo_a#1 a"]);
    // a's compensation fails for good: x waits for it, y does not.
    let fx = h.fail_unit(a, false);
    assert!(!is_send(&fx));
    let fx = h.finish(b, json!({}));
    assert_eq!(sends(&fx), ["send undo_y#1 y"]);
    let fx = h.finish(y, json!({}));
    assert_eq!(
        said(&fx),
        [
            "persist",
            "compensation_completed y",
            "saga_failed a",
            "finish"
        ]
    );
    assert_eq!(h.undone(), ["b", "y"]);
    // Retried and done: x follows.
    h.apply(operator(Action::Retry));
    let fx = h.finish(a, json!({}));
    assert_eq!(sends(&fx), ["send undo_x#1 x"]);
    h.finish(x, json!({}));
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(h.undone(), ["b", "y", "a", "x"]);
}

// ----------------------------------------------------------------- cancel

#[test]
fn a_cancel_mid_fan_out_undoes_the_branches_in_flight_as_unknown() {
    #[derive(Debug)]
    enum One {
        InFlight,
        BackingOffAfterFailure,
        BackingOffAfterTimeout,
    }
    // (where branch 1 is, whether it is undone)
    let cases = [
        (One::InFlight, true),
        (One::BackingOffAfterFailure, false),
        (One::BackingOffAfterTimeout, true),
    ];
    for (one, undone) in cases {
        // Four robots, two at once: 0 completed, 1 (sent at 1010) and 2
        // (sent at 1100) under way, 3 waiting.
        let (mut h, _) = Harness::fan(Some(2), robots(4));
        h.at(1_100);
        h.finish(visit(0), visited(0));
        match one {
            One::InFlight => {}
            One::BackingOffAfterFailure => {
                h.at(1_200);
                h.fail_unit(visit(1), true);
            }
            One::BackingOffAfterTimeout => {
                h.clock_of(visit(1));
            }
        }
        let two = h.exchange_of(visit(2)).request_id.clone();
        h.at(h.now + 10);
        let fx = h.apply(operator(Action::Cancel));
        let first = match undone {
            true => ["send leave#1 visit[2]", "send leave#1 visit[1]"],
            false => ["send leave#1 visit[2]", "send leave#1 visit[0]"],
        };
        assert_eq!(sends(&fx), first, "{one:?}");
        assert_eq!(said(&fx)[1], "operator_action visit[1]", "{one:?}");
        let failure = h.state.failure().unwrap().clone();
        assert_eq!(failure.cancelled_by.as_deref(), Some("ops@host"));
        assert_eq!((failure.step.as_str(), failure.branch), ("visit", Some(1)));
        // Branch 1's effect is unknown when it was in flight or had timed
        // out: it is to be undone (and, here, is being undone already).
        assert_eq!(h.state.work.done.contains(&visit(1)), undone, "{one:?}");
        let one_state = h.state.work.get(visit(1)).unwrap();
        assert_eq!(
            matches!(one_state, UnitState::Undoing(_)),
            undone,
            "{one:?}: {one_state:?}"
        );
        // The cancelled attempt's reply is no longer awaited.
        let late = h.reply_of(Some(two), ReplyStatus::Completed { result: json!({}) });
        assert_eq!(
            h.try_apply(Event::Reply(late)).err(),
            Some(Ignored::NotAwaited)
        );
        h.drain_compensations(2);
        assert_eq!(h.status(), SagaStatus::Compensated);
        let mut expected = vec!["visit[2]", "visit[1]", "visit[0]", "prepare"];
        if !undone {
            expected.remove(1);
        }
        assert_eq!(h.undone(), expected, "{one:?}");
        let never = h.event_lines().iter().any(|l| l.contains("visit[3]"));
        assert!(!never, "{one:?}: branch 3 never started");
        let end = h.last_event_payload(EventType::SagaCompensated);
        assert_eq!(end["cancelled_by"], "ops@host");
    }
}

// ------------------------------------------------------ crash and resume

/// One event of a scripted run, named by unit so that it means the same
/// after a restart, when request ids are new.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// The unit's exchange completes (prepare with the robots).
    Complete(Unit),
    Fail(Unit, bool),
    Progress(Unit),
    /// The tick at the next clock.
    Tick,
}

impl Harness {
    fn play(&mut self, step: Script) -> Fx {
        self.at(self.now + 10);
        match step {
            Script::Complete(unit)
                if unit.step == PREPARE && self.status() == SagaStatus::Running =>
            {
                self.finish(unit, json!({ "robots": robots(3) }))
            }
            Script::Complete(unit) => {
                let result = json!({ "by": self.label(unit) });
                self.finish(unit, result)
            }
            Script::Fail(unit, retryable) => self.fail_unit(unit, retryable),
            Script::Progress(unit) => {
                let progress = ReplyStatus::Progress {
                    percent: Some(50.0),
                    details: Value::Null,
                };
                self.reply_to(unit, progress)
            }
            Script::Tick => {
                let at = self.state.wake_at().expect("a clock");
                self.at(at);
                self.apply(Event::Tick)
            }
        }
    }
}

/// Three branches, two at once; one fails for good while another, which
/// failed before, is tried again and times out; one compensation is
/// retried.
fn crash_script() -> Vec<Script> {
    use Script::*;
    vec![
        Complete(Unit::step(PREPARE)),
        Progress(visit(0)),
        Complete(visit(0)),
        Fail(visit(1), true),
        Tick,
        Fail(visit(2), false),
        Progress(visit(1)),
        Tick,
        Complete(visit(1)),
        Fail(visit(0), true),
        Tick,
        Complete(visit(0)),
        Progress(Unit::step(PREPARE)),
        Complete(Unit::step(PREPARE)),
    ]
}

/// An event as the audit stream keeps it: type, unit, status.
fn audit(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit(ev) => Some(format!("{} {}", line(e), ev.status.as_str())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_saga_resumed_from_its_record_after_any_transition_ends_as_without_a_crash() {
    let script = crash_script();
    let (mut reference, _) = Harness::with(&fan_def(Some(2)));
    for &step in &script {
        reference.play(step);
    }
    assert_eq!(
        audit(&reference.log),
        [
            "saga_started running",
            "step_started prepare running",
            "step_completed prepare running",
            "step_started visit running",
            "step_started visit[0] running",
            "step_started visit[1] running",
            "step_progress visit[0] running",
            "step_completed visit[0] running",
            "step_started visit[2] running",
            "step_failed visit[1] running",
            "step_retrying visit[1] running",
            "step_started visit[1] running",
            "step_failed visit[2] compensating",
            "step_progress visit[1] compensating",
            "step_timed_out visit[1] compensating",
            "compensation_started visit[1] compensating",
            "compensation_started visit[0] compensating",
            "compensation_completed visit[1] compensating",
            "compensation_failed visit[0] compensating",
            "compensation_retrying visit[0] compensating",
            "compensation_started visit[0] compensating",
            "compensation_completed visit[0] compensating",
            "compensation_started prepare compensating",
            "compensation_progress prepare compensating",
            "compensation_completed prepare compensating",
            "saga_compensated compensated",
        ]
    );
    assert_eq!(reference.undone(), ["visit[1]", "visit[0]", "prepare"]);
    let expected_sends: Vec<(String, Value)> = sent_payloads(&reference.log);

    for crash in 0..=script.len() {
        let (mut before, _) = Harness::with(&fan_def(Some(2)));
        // What the store holds: the state after the last transition that
        // changed it (the start did).
        let mut record = serde_json::to_string(&before.state).unwrap();
        for &step in &script[..crash] {
            let fx = before.play(step);
            let text = serde_json::to_string(&before.state).unwrap();
            let back: SagaState = serde_json::from_str(&text).unwrap();
            assert_eq!(back, before.state, "the record round-trips, after {step:?}");
            if fx.changed {
                record = text;
            }
        }
        let (def, now, log) = (before.def.clone(), before.now, before.log.clone());
        drop(before);
        // Another process takes over from the record, with ids of its own.
        let mut after = Harness {
            def,
            state: serde_json::from_str(&record).unwrap(),
            ids: SeqIds(1 << 40),
            now,
            log: Vec::new(),
        };
        for &step in &script[crash..] {
            after.play(step);
        }
        let mut whole = log;
        whole.extend(after.log.clone());
        assert_eq!(
            audit(&whole),
            audit(&reference.log),
            "crash after {crash} events"
        );
        assert_eq!(sent_payloads(&whole), expected_sends, "crash after {crash}");
        assert_eq!(after.state, reference.state, "crash after {crash}");
    }
}

/// Each command sent, with its payload.
fn sent_payloads(effects: &[Effect]) -> Vec<(String, Value)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { command, .. } => Some((line(e), command.payload.clone())),
            _ => None,
        })
        .collect()
}

// ----------------------------------------------------------- replies

#[test]
fn replies_match_only_the_exchange_under_way() {
    let (mut h, _) = Harness::fan(None, robots(2));
    let zero = h.exchange_of(visit(0)).request_id.clone();
    let one = h.exchange_of(visit(1)).request_id.clone();
    let done = || ReplyStatus::Completed { result: visited(0) };
    let completed = h.reply_of(Some(zero.clone()), done());
    assert!(h.try_apply(Event::Reply(completed.clone())).is_ok());
    // (what, the reply) — each ignored as not awaited, changing nothing.
    let mut other_saga = h.reply_of(Some(one.clone()), done());
    other_saga.saga_id = Some(SagaId::from_trusted("6".repeat(32)));
    let stale: [(&str, Reply); 4] = [
        (
            "a duplicate of a finished branch's reply",
            completed.clone(),
        ),
        (
            "a failure of a finished branch",
            h.reply_of(
                Some(zero.clone()),
                ReplyStatus::Failed {
                    error: "late".into(),
                    retryable: false,
                },
            ),
        ),
        (
            "an unknown request id",
            h.reply_of(Some(RequestId::from_trusted("f".repeat(32))), done()),
        ),
        ("another saga's", other_saga),
    ];
    for (what, reply) in stale {
        assert_eq!(
            h.try_apply(Event::Reply(reply)).err(),
            Some(Ignored::NotAwaited),
            "{what}"
        );
    }
    // An earlier attempt's reply, once the branch is tried again.
    h.fail_unit(visit(1), true);
    h.clock_of(visit(1));
    let first_attempt = h.reply_of(Some(one), done());
    assert_eq!(
        h.try_apply(Event::Reply(first_attempt)).err(),
        Some(Ignored::NotAwaited)
    );
    h.finish(visit(1), visited(1));
    assert_eq!(
        h.state.results["visit"].value(),
        json!([visited(0), visited(1)])
    );
}

#[test]
fn a_reply_without_request_id_matches_only_the_one_exchange_of_its_command() {
    let legacy = |h: &Harness, command: &str| {
        let mut reply = h.reply_of(
            None,
            ReplyStatus::Completed {
                result: json!({ "legacy": command }),
            },
        );
        reply.event_type = Some(command.into());
        Event::Reply(reply)
    };
    // Two branches of `visit` wait: ambiguous.
    let (mut h, _) = Harness::fan(None, robots(2));
    assert_eq!(
        h.try_apply(legacy(&h, "visit")).err(),
        Some(Ignored::NotAwaited),
        "two branches wait for `visit`"
    );
    assert_eq!(
        h.try_apply(legacy(&h, "prepare")).err(),
        Some(Ignored::NotAwaited),
        "prepare has completed"
    );
    // One backing off, one waiting: the waiting one.
    h.fail_unit(visit(0), true);
    assert!(h.try_apply(legacy(&h, "visit")).is_ok());
    assert_eq!(
        h.state.work.get(visit(1)),
        Some(&UnitState::Completed {
            result: Some(crate::protocol::Json::of(&json!({ "legacy": "visit" })))
        })
    );
    // The retried one, alone.
    h.clock_of(visit(0));
    assert!(h.try_apply(legacy(&h, "visit")).is_ok());
    assert_eq!(h.acting(), [Unit::step(REPORT)]);

    // One at a time (max_concurrency 1): each matches.
    let (mut h, _) = Harness::fan(Some(1), robots(2));
    assert!(h.try_apply(legacy(&h, "visit")).is_ok());
    assert_eq!(h.acting(), [visit(1)]);

    // Compensations of two branches wait: ambiguous; then one: it.
    let mut h = unwinding_three_branches();
    h.finish(visit(2), json!({}));
    assert_eq!(
        h.try_apply(legacy(&h, "leave")).err(),
        Some(Ignored::NotAwaited)
    );
    h.finish(visit(1), json!({}));
    assert!(h.try_apply(legacy(&h, "leave")).is_ok());
    assert_eq!(h.undone(), ["visit[2]", "visit[1]", "visit[0]"]);
    assert_eq!(h.undoing(), [Unit::step(PREPARE)]);
}

// ------------------------------------------------------ what is written

#[test]
fn only_transitions_that_change_the_state_are_written() {
    let (mut h, _) = Harness::fan(Some(2), robots(3));
    let progress = ReplyStatus::Progress {
        percent: Some(10.0),
        details: json!({ "room": 1 }),
    };
    // (what, the event's lines: `persist` first when written)
    let fx = h.reply_to(visit(1), progress.clone());
    assert_eq!(said(&fx), ["step_progress visit[1]"], "progress");
    let fx = h.reply_to(visit(1), ReplyStatus::Start);
    assert!(fx.is_empty(), "a start without clocks: {fx:?}");
    let fx = h.reply_to(visit(1), ReplyStatus::Heartbeat);
    assert!(fx.is_empty(), "a heartbeat without clocks: {fx:?}");
    assert_eq!(h.try_apply(Event::Tick).err(), Some(Ignored::NothingDue));
    let fx = h.apply(operator(Action::Retry));
    assert_eq!(said(&fx), ["operator_action"], "a refused request");
    let fx = h.apply(Event::Operator(OperatorRequest {
        action: Action::Cancel,
        by: "ops@host".into(),
        reason: "because".into(),
        unproven: Some("unsigned".into()),
    }));
    assert_eq!(said(&fx), ["operator_action"], "an unproven request");
    let fx = h.finish(visit(1), visited(1));
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_completed visit[1]",
            "step_started visit[2]",
            "send visit#1 visit[2]",
            "timer"
        ]
    );
    let fx = h.fail_unit(visit(0), true);
    assert_eq!(
        said(&fx),
        [
            "persist",
            "step_failed visit[0]",
            "step_retrying visit[0]",
            "timer"
        ]
    );
    let fx = h.fail_unit(visit(2), false);
    assert_eq!(said(&fx)[..2], ["persist", "step_failed visit[2]"]);
    let fx = h.reply_to(visit(1), progress);
    assert_eq!(
        said(&fx),
        ["compensation_progress visit[1]"],
        "a compensation's progress"
    );
    h.drain_compensations(2);
    assert_eq!(h.status(), SagaStatus::Compensated);
    assert_eq!(
        h.try_apply(Event::Tick).err(),
        Some(Ignored::Ended),
        "an ended saga"
    );
}

mod waits;
