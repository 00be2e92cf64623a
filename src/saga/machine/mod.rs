//! The transition function: `start` makes a saga, `apply` moves it on.
//!
//! A saga's steps form a graph (`after:`); a step starts once every step it
//! waits for has completed, and a fan-out step (`for_each:`) runs one
//! branch per element of its list, at most `max_concurrency` at once. Each
//! step, or branch, is a [`Unit`] with its own command exchange. This file
//! holds the forward path; `failure.rs` the unwinding, `operator.rs` what
//! operators do.

use super::ids::IdSource;
use super::state::{Clock, Exchange, Phase, SagaState, StepWork, Unit, UnitState, Waiting, Work};
use crate::definition::template::Context;
use crate::definition::{Clocks, ReplyMode, RetryPolicy, SagaDefinition, Template, MAX_BRANCHES};
use crate::protocol::payload;
use crate::protocol::{
    Command, CommandKind, CorrelationId, EventType, Json, Reply, ReplyStatus, SagaEvent, SagaId,
    SpanId, TraceId, TraceParent, UnixMillis,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::Duration;

mod failure;
mod operator;
mod waits;

pub use operator::{Action, OperatorRequest};
pub use waits::{LockAnswer, LockOutcome};

/// What happens to a saga. Events are moved once from the reader to the
/// machine, never stored in bulk, so the size gap between variants is fine.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A reply for this saga arrived (the router matched its `saga_id` or
    /// `request_id`; whether an attempt under way awaits it is decided
    /// here).
    Reply(Reply),
    /// Time passed: a deadline or a backoff may be due.
    Tick,
    /// An operator's request: cancel, retry, skip, abandon.
    Operator(OperatorRequest),
    /// The answer to the saga asking for a lock (see [`crate::saga::Ask`]).
    Lock(LockAnswer),
    /// A signal kept for the saga.
    Signal(crate::protocol::signal::KeptSignal),
}

/// What the driver must do after a transition, in order: the commands and
/// events are written together with the state (when it changed), the
/// timer and the end come after.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Send {
        stream: String,
        command: Command,
    },
    Emit(SagaEvent),
    /// The saga leaves the queues of these locks (holder or waiter), with
    /// this transition.
    Unlock {
        locks: Vec<String>,
    },
    /// Deliver a [`Event::Tick`] at this time.
    ArmTimer {
        at_ms: UnixMillis,
    },
    /// The saga has ended; nothing more will happen to it.
    Finish,
}

/// What one event did to a saga.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub effects: Vec<Effect>,
    /// Whether the saga's state changed and must be written. A progress
    /// report, or an operator's request refused, is recorded on the audit
    /// stream only.
    pub changed: bool,
}

/// Why an event did nothing to a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// The saga has ended: only an operator's request moves it now.
    Ended,
    /// No attempt under way awaits this reply: an earlier attempt's, a
    /// duplicate, another saga's, or (without `request_id`) one that could
    /// be the reply of more than one branch.
    NotAwaited,
    /// The reply reached Redis after one of its attempt's clocks ran out:
    /// the timeout wins, even if it has not been seen yet.
    Late,
    /// A tick with nothing due: the timer's clock ran a little ahead.
    NothingDue,
}

/// Everything a new saga starts from.
#[derive(Clone, Debug)]
pub struct SagaInit {
    pub saga_id: SagaId,
    pub correlation_id: CorrelationId,
    pub trace_id: TraceId,
    pub parent_span_id: Option<SpanId>,
    pub reply_stream: String,
    pub input: Value,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Creates a saga and starts the steps that wait for none.
pub fn start(
    def: &SagaDefinition,
    init: SagaInit,
    now: UnixMillis,
    ids: &mut dyn IdSource,
) -> (SagaState, Transition) {
    let mut state = SagaState {
        saga_id: init.saga_id,
        saga: def.name.clone(),
        definition_version: def.version.clone(),
        correlation_id: init.correlation_id,
        trace_id: init.trace_id,
        parent_span_id: init.parent_span_id,
        span_id: Some(ids.span_id()),
        reply_stream: init.reply_stream,
        input: Json::of(&init.input),
        results: Default::default(),
        phase: Phase::Running,
        work: Work::default(),
        rescues: 0,
        started_at_ms: now,
        paused: None,
        locks: Default::default(),
    };
    let mut m = Machine::new(&mut state, def, now, ids);
    let trace_id = m.state.trace_id.clone();
    let started = payload::SagaStarted {
        input: init.input,
        trace_id,
    };
    m.emit(EventType::SagaStarted, None, &started);
    m.advance();
    let mut transition = m.finish();
    transition.changed = true;
    (state, transition)
}

/// Moves a saga on by one event.
pub fn apply(
    state: &mut SagaState,
    def: &SagaDefinition,
    event: Event,
    now: UnixMillis,
    ids: &mut dyn IdSource,
) -> Result<Transition, Ignored> {
    // Operators may rescue a saga that failed; nothing else moves an ended
    // saga.
    if state.phase.is_terminal() && !matches!(event, Event::Operator(_)) {
        return Err(Ignored::Ended);
    }
    let mut m = Machine::new(state, def, now, ids);
    match event {
        Event::Reply(reply) => m.on_reply(reply)?,
        // No clock runs while paused.
        Event::Tick if m.state.paused.is_some() => return Err(Ignored::NothingDue),
        Event::Tick => m.on_tick()?,
        Event::Operator(request) => m.on_operator(request),
        Event::Lock(answer) => m.on_lock(answer)?,
        Event::Signal(signal) => m.on_signal(signal)?,
    }
    Ok(m.finish())
}

/// Sets a saga aside as failed because one of its transitions can never
/// be written: `state` is its last state written, `reason` why the next
/// one cannot be, `replies` the final replies that transition applied
/// (kept, to be applied again when the saga is retried). It ends
/// `saga_failed` (an operator can retry it once the cause is mended, or
/// abandon it), keeping the phase it was in.
pub fn park(
    state: &mut SagaState,
    def: &SagaDefinition,
    reason: String,
    replies: Vec<Reply>,
    now: UnixMillis,
    ids: &mut dyn IdSource,
) -> Result<Transition, Ignored> {
    if state.phase.is_terminal() {
        return Err(Ignored::Ended);
    }
    let mut m = Machine::new(state, def, now, ids);
    m.park(reason, replies);
    Ok(m.finish())
}

struct Machine<'a> {
    /// Read freely; written only through [`Machine::st`], which notes the
    /// change.
    state: &'a mut SagaState,
    def: &'a SagaDefinition,
    now: UnixMillis,
    ids: &'a mut dyn IdSource,
    effects: Vec<Effect>,
    changed: bool,
}

/// How an attempt ended without completing.
enum Miss {
    Failed {
        error: String,
        retryable: bool,
    },
    /// One of its clocks ran out without a final reply.
    TimedOut {
        reason: String,
        clock: Clock,
    },
}

/// Where and how one kind of command of a step is sent.
struct Target<'d> {
    stream: &'d str,
    command: &'d str,
    timeout: Duration,
    clocks: Clocks,
    retry: RetryPolicy,
    input: Option<&'d Template>,
    replies: ReplyMode,
}

impl<'a> Machine<'a> {
    fn new(
        state: &'a mut SagaState,
        def: &'a SagaDefinition,
        now: UnixMillis,
        ids: &'a mut dyn IdSource,
    ) -> Self {
        Self {
            state,
            def,
            now,
            ids,
            effects: Vec::new(),
            changed: false,
        }
    }

    /// The state, to change it.
    fn st(&mut self) -> &mut SagaState {
        self.changed = true;
        self.state
    }

    /// Sets a unit's state, starting the unit if it is the next of its
    /// step.
    fn set_unit(&mut self, unit: Unit, to: UnitState) {
        let work = self.st().work.steps.get_mut(&unit.step);
        let work = work.expect("a unit of a step that has started");
        match work.units.get_mut(unit.slot()) {
            Some(slot) => *slot = to,
            None => {
                debug_assert_eq!(work.units.len(), unit.slot(), "units start in order");
                work.units.push(to);
            }
        }
    }

    fn unit_state(&self, unit: Unit) -> Option<&UnitState> {
        self.state.work.get(unit)
    }

    /// Adds the timer and the end, and says whether the state changed.
    fn finish(mut self) -> Transition {
        let terminal = self.state.phase.is_terminal();
        // A saga that ended while paused (its last command completed) is
        // paused no more.
        if terminal && self.state.paused.is_some() {
            self.st().paused = None;
        }
        if terminal {
            self.release_locks();
        }
        if let Some(at_ms) = self.state.wake_at().filter(|_| self.changed && !terminal) {
            self.effects.push(Effect::ArmTimer { at_ms });
        }
        if terminal && self.changed {
            self.effects.push(Effect::Finish);
        }
        Transition {
            effects: self.effects,
            changed: self.changed,
        }
    }

    fn step_name(&self, step: usize) -> &'a str {
        let def: &'a SagaDefinition = self.def;
        &def.steps[step].name
    }

    /// `<step>`, or `<step>[<branch>]` for a branch.
    fn label(&self, unit: Unit) -> String {
        let name = self.step_name(unit.step);
        match unit.branch {
            Some(b) => format!("{name}[{b}]"),
            None => name.to_owned(),
        }
    }

    /// Records an audit event about the saga, a step (`branch: None`) or a
    /// branch.
    fn emit(&mut self, event_type: EventType, unit: Option<Unit>, payload: &impl Serialize) {
        let payload = serde_json::to_value(payload).expect("payloads always serialize");
        self.effects.push(Effect::Emit(SagaEvent {
            correlation_id: self.state.correlation_id.clone(),
            saga_id: Some(self.state.saga_id.clone()),
            saga: self.state.saga.clone(),
            event_type,
            status: self.state.phase.status(),
            step: unit.map(|u| self.step_name(u.step).to_owned()),
            branch: unit.and_then(|u| u.branch),
            payload,
            timestamp: self.now,
        }));
    }

    fn context_payload(&self, with_failure: bool) -> Value {
        let steps: Map<String, Value> = (self.state.results.iter())
            .map(|(name, result)| {
                (
                    name.clone(),
                    serde_json::json!({ "result": result.value() }),
                )
            })
            .collect();
        let mut ctx = serde_json::json!({ "input": self.state.input.value(), "steps": steps });
        if let (true, Some(f)) = (with_failure, self.state.failure()) {
            ctx["failure"] = serde_json::json!({ "step": f.step, "reason": f.reason });
        }
        ctx
    }

    fn render(
        &self,
        template: Option<&Template>,
        kind: CommandKind,
        unit: Unit,
    ) -> Result<Value, String> {
        let compensation = kind == CommandKind::Compensation;
        let item = self.state.work.item(unit).map(Json::value);
        let Some(template) = template else {
            let mut payload = self.context_payload(compensation);
            if let (Some(item), Some(branch)) = (item, unit.branch) {
                payload["item"] = item;
                payload["index"] = branch.into();
            }
            return Ok(payload);
        };
        let ctx = Context {
            item: item.as_ref().zip(unit.branch.map(|b| b as usize)),
            ..self.context(compensation)
        };
        template.render(&ctx, compensation).map_err(|e| e.0)
    }

    /// What templates render from, outside a branch; the failure only for
    /// a compensation's.
    fn context(&self, with_failure: bool) -> Context<'_> {
        let failure = (self.state.failure())
            .filter(|_| with_failure)
            .map(|f| (f.step.as_str(), f.reason.as_str()));
        Context {
            input: &self.state.input,
            results: &self.state.results,
            saga_id: self.state.saga_id.as_str(),
            correlation_id: self.state.correlation_id.as_str(),
            failure,
            item: None,
        }
    }

    /// What a command of step `index` (its action or its compensation) is.
    fn target(&self, index: usize, kind: CommandKind) -> Target<'a> {
        let def: &'a SagaDefinition = self.def;
        let step = &def.steps[index];
        match kind {
            CommandKind::Action => Target {
                stream: &step.stream,
                command: &step.command,
                timeout: step.timeout,
                clocks: step.clocks,
                retry: step.retry,
                input: step.input.as_ref(),
                replies: step.replies,
            },
            CommandKind::Compensation => {
                let comp = step
                    .compensation
                    .as_ref()
                    .expect("only steps with a compensation are undone");
                Target {
                    stream: &comp.stream,
                    command: &comp.command,
                    timeout: comp.timeout,
                    clocks: comp.clocks,
                    retry: comp.retry,
                    input: comp.input.as_ref(),
                    replies: comp.replies,
                }
            }
        }
    }

    /// Branches of step `step` under way at once, at most.
    fn concurrency(&self, step: usize) -> usize {
        let for_each = self.def.steps[step].for_each.as_ref();
        let max = for_each.and_then(|f| f.max_concurrency);
        max.map_or(usize::MAX, |m| m as usize).max(1)
    }

    // ------------------------------------------------------ going forward

    /// Starts what can start, until nothing more can: while running, the
    /// steps whose dependencies completed and the next branches of
    /// fan-outs, and the saga's completion; while unwinding, the
    /// compensations (see `failure.rs`).
    fn advance(&mut self) {
        // Paused: what is under way finishes; nothing new starts until the
        // saga is resumed.
        if self.state.paused.is_some() {
            return;
        }
        loop {
            let progressed = match self.state.phase {
                Phase::Running => self.run_forward(),
                Phase::Compensating(_) => self.unwind(),
                _ => false,
            };
            if !progressed {
                return;
            }
        }
    }

    /// Whether every step has completed.
    fn all_steps_completed(&self) -> bool {
        let work = &self.state.work;
        (0..self.def.steps.len()).all(|i| work.steps.get(&i).is_some_and(StepWork::completed))
    }

    /// One round of going forward; true if anything started or ended.
    fn run_forward(&mut self) -> bool {
        let def = self.def;
        if self.all_steps_completed() {
            self.complete_saga();
            return true;
        }
        let work = &self.state.work;
        let done = |s: &usize| work.steps.get(s).is_some_and(StepWork::completed);
        let ready: Vec<usize> = (0..def.steps.len())
            .filter(|i| !work.steps.contains_key(i) && def.steps[*i].after.iter().all(done))
            .collect();
        let mut progressed = self.start_locked();
        for step in ready {
            if !matches!(self.state.phase, Phase::Running) {
                return true;
            }
            self.begin_step(step);
            progressed = true;
        }
        let fan_outs: Vec<usize> = (self.state.work.steps.iter())
            .filter(|(_, w)| w.items.is_some() && w.locking.is_none() && w.units.len() < w.total())
            .map(|(s, _)| *s)
            .collect();
        for step in fan_outs {
            if !matches!(self.state.phase, Phase::Running) {
                return true;
            }
            progressed |= self.fill(step);
        }
        progressed
    }

    fn complete_saga(&mut self) {
        self.st().phase = Phase::Completed {
            ended_at_ms: self.now,
        };
        self.emit_saga_completed();
    }

    fn emit_saga_completed(&mut self) {
        let results: Map<String, Value> = (self.state.results.iter())
            .map(|(name, result)| (name.clone(), result.value()))
            .collect();
        self.emit(
            EventType::SagaCompleted,
            None,
            &payload::SagaCompleted { results },
        );
    }

    /// Starts a step whose dependencies have completed: its locks first,
    /// when it takes any; then its command, or its fan-out's first
    /// branches; or, for a `wait` step, the wait for its signal.
    fn begin_step(&mut self, step: usize) {
        if let Some(signal) = &self.def.steps[step].wait {
            return self.begin_wait(step, signal.clone());
        }
        let items = match &self.def.steps[step].for_each {
            None => None,
            Some(for_each) => match self.items_of(&for_each.items) {
                Ok(items) => Some(items),
                Err(reason) => {
                    // A list that cannot be taken now never will be: the
                    // step fails at once, with nothing of it to undo.
                    let name = self.step_name(step);
                    let reason = format!("cannot take the list of step `{name}`: {reason}");
                    self.fail_saga(Unit::step(step), reason.clone());
                    self.emit_failed_to_build(Unit::step(step), 1, &reason);
                    return;
                }
            },
        };
        self.st().work.steps.insert(
            step,
            StepWork {
                items,
                locking: None,
                units: Vec::new(),
            },
        );
        if !self.def.steps[step].locks.is_empty() {
            match self.locks_to_take(step) {
                Ok(pending) if pending.is_empty() => {}
                Ok(pending) => {
                    let timeout = ms(self.def.steps[step].lock_timeout);
                    let wait = crate::saga::state::LockWait {
                        pending,
                        since_ms: self.now,
                        deadline_ms: self.now.saturating_add(timeout),
                        holder: None,
                        ahead: None,
                    };
                    let work = self.st().work.steps.get_mut(&step).expect("inserted");
                    work.locking = Some(wait);
                    return;
                }
                Err(reason) => {
                    let name = self.step_name(step);
                    let reason = format!("cannot take the locks of step `{name}`: {reason}");
                    self.fail_saga(Unit::step(step), reason.clone());
                    self.emit_failed_to_build(Unit::step(step), 1, &reason);
                    return;
                }
            }
        }
        self.start_units(step);
    }

    /// Starts a step's units, its locks held: its command, or its
    /// fan-out's first branches.
    fn start_units(&mut self, step: usize) {
        let branches = match &self.state.work.steps[&step].items {
            None => return self.send_action(Unit::step(step), 1, false),
            Some(items) => items.len(),
        };
        let max_concurrency = self.concurrency(step).min(branches.max(1));
        let started = payload::FanOutStarted {
            branches,
            max_concurrency,
        };
        self.emit(EventType::StepStarted, Some(Unit::step(step)), &started);
        if branches == 0 {
            self.complete_fan_out(step);
        } else {
            self.fill(step);
        }
    }

    /// The elements of a fan-out's list, or why there are none.
    fn items_of(&self, expr: &crate::definition::template::Expr) -> Result<Vec<Json>, String> {
        let value = Template::Expr(expr.clone())
            .render(&self.context(false), false)
            .map_err(|e| e.0)?;
        let Value::Array(items) = value else {
            return Err(format!("`{expr}` is not a list"));
        };
        if items.len() > MAX_BRANCHES {
            return Err(format!(
                "`{expr}` has {} elements, more than the {MAX_BRANCHES} branches a fan-out may have",
                items.len()
            ));
        }
        Ok(items.iter().map(Json::of).collect())
    }

    /// Starts the next branches of a fan-out, up to its concurrency. True
    /// if any started.
    fn fill(&mut self, step: usize) -> bool {
        let max = self.concurrency(step);
        let mut started = false;
        loop {
            let Some(work) = self.state.work.steps.get(&step) else {
                return started;
            };
            if work.locking.is_some() {
                return started;
            }
            let running = (work.units.iter())
                .filter(|u| matches!(u, UnitState::Acting(_)))
                .count();
            let next = work.units.len();
            if running >= max || next >= work.total() || !matches!(self.state.phase, Phase::Running)
            {
                return started;
            }
            let unit = work.unit(step, next);
            self.send_action(unit, 1, false);
            started = true;
        }
    }

    /// Gathers a fan-out's results, in the order of its elements, once
    /// every branch completed.
    fn complete_fan_out(&mut self, step: usize) {
        let work = self.st().work.steps.get_mut(&step).expect("started");
        let results: Vec<Value> = (work.units.iter_mut())
            .map(|u| match u {
                UnitState::Completed { result } => result.take().map_or(Value::Null, |r| r.value()),
                _ => Value::Null,
            })
            .collect();
        let branches = results.len();
        let result = Value::Array(results);
        let name = self.step_name(step).to_owned();
        self.st().results.insert(name, Json::of(&result));
        let completed = payload::FanOutCompleted { branches, result };
        self.emit(EventType::StepCompleted, Some(Unit::step(step)), &completed);
    }

    /// Sends attempt `attempt` of a unit's action.
    fn send_action(&mut self, unit: Unit, attempt: u32, timed_out: bool) {
        let target = self.target(unit.step, CommandKind::Action);
        match self.render(target.input, CommandKind::Action, unit) {
            Ok(payload) => self.send(unit, CommandKind::Action, attempt, timed_out, payload),
            Err(reason) => {
                // A payload that cannot be built will not be buildable on a
                // retry either: the unit fails at once.
                let name = self.step_name(unit.step);
                let reason = format!("cannot build the input of step `{name}`: {reason}");
                self.set_unit(
                    unit,
                    UnitState::Ended {
                        effect_unknown: timed_out,
                    },
                );
                if timed_out {
                    self.st().work.done.push(unit);
                }
                self.fail_saga(unit, reason.clone());
                self.emit_failed_to_build(unit, attempt, &reason);
            }
        }
    }

    fn emit_failed_to_build(&mut self, unit: Unit, attempt: u32, reason: &str) {
        let failed = payload::AttemptFailed {
            attempt,
            error: reason.to_owned(),
            retryable: false,
            request_id: None,
        };
        self.emit(EventType::StepFailed, Some(unit), &failed);
    }

    /// Sends attempt `attempt` of a unit's compensation.
    fn send_compensation(&mut self, unit: Unit, attempt: u32) {
        let target = self.target(unit.step, CommandKind::Compensation);
        let payload = self
            .render(target.input, CommandKind::Compensation, unit)
            .expect("compensation templates render leniently");
        self.send(unit, CommandKind::Compensation, attempt, false, payload);
    }

    fn send(
        &mut self,
        unit: Unit,
        kind: CommandKind,
        attempt: u32,
        timed_out: bool,
        payload: Value,
    ) {
        let target = self.target(unit.step, kind);
        let request_id = self.ids.request_id();
        let span_id = self.ids.span_id();
        let deadline_ms = self.now.saturating_add(ms(target.timeout));
        let ack_timeout_ms = target.clocks.ack.map(ms);
        let heartbeat_timeout_ms = target.clocks.heartbeat.map(ms);
        let reply_stream = match target.replies {
            ReplyMode::Shared => self.state.reply_stream.clone(),
            ReplyMode::PerRequest => format!("{}:{request_id}", self.state.reply_stream),
        };
        let exchange = Exchange {
            kind,
            attempt,
            request_id: request_id.clone(),
            span_id: span_id.clone(),
            sent_at_ms: self.now,
            waiting: Waiting::Reply {
                deadline_ms,
                ack_by_ms: ack_timeout_ms.map(|t| self.now.saturating_add(t)),
                heartbeat_by_ms: heartbeat_timeout_ms.map(|t| self.now.saturating_add(t)),
            },
            timed_out,
            reply_stream: reply_stream.clone(),
        };
        let (event, state) = match kind {
            CommandKind::Action => (EventType::StepStarted, UnitState::Acting(exchange)),
            CommandKind::Compensation => {
                (EventType::CompensationStarted, UnitState::Undoing(exchange))
            }
        };
        self.set_unit(unit, state);
        let started = payload::AttemptStarted {
            attempt,
            request_id: request_id.clone(),
            kind,
            command: target.command.to_owned(),
            stream: target.stream.to_owned(),
            reply_stream: reply_stream.clone(),
            span_id: span_id.clone(),
            deadline_ms,
            ack_timeout_ms,
            heartbeat_timeout_ms,
            item: self.state.work.item(unit).map(Json::value),
        };
        self.emit(event, Some(unit), &started);
        let command = Command {
            correlation_id: self.state.correlation_id.clone(),
            saga_id: self.state.saga_id.clone(),
            request_id,
            traceparent: TraceParent::new(self.state.trace_id.clone(), span_id),
            event_type: target.command.to_owned(),
            step: self.step_name(unit.step).to_owned(),
            kind,
            attempt,
            reply_stream,
            payload,
            deadline_ms,
            timestamp: self.now,
            ack_timeout_ms,
            heartbeat_timeout_ms,
            branch: unit.branch,
        };
        self.effects.push(Effect::Send {
            stream: target.stream.to_owned(),
            command,
        });
    }

    // ------------------------------------------------------------- replies

    /// The unit whose attempt under way this reply is about.
    fn awaited(&self, reply: &Reply) -> Result<(Unit, Exchange), Ignored> {
        if (reply.saga_id.as_ref()).is_some_and(|s| *s != self.state.saga_id) {
            return Err(Ignored::NotAwaited);
        }
        let waiting = |(_, x): &(Unit, &Exchange)| matches!(x.waiting, Waiting::Reply { .. });
        let mut candidates = self.state.work.exchanges().filter(waiting);
        let found = match &reply.request_id {
            Some(id) => candidates.find(|(_, x)| x.request_id == *id),
            // The original handlers' replies: matched by the command name
            // they repeat, to the one outstanding command of that name.
            None => {
                let name = reply.event_type.as_deref();
                let mut named =
                    candidates.filter(|(u, x)| Some(self.target(u.step, x.kind).command) == name);
                match (named.next(), named.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            }
        };
        let (unit, x) = found.ok_or(Ignored::NotAwaited)?;
        // A reply that reached Redis after one of the attempt's clocks ran
        // out is late: the timeout wins, even if it has not been seen yet.
        // While the saga is paused its clocks stand still: a reply is late
        // only if a clock ran out before the pause.
        let due = x.waiting.due_ms();
        let stopped = self.state.paused.as_ref().map(|p| p.since_ms);
        let late = |at: UnixMillis| at > due && stopped.is_none_or(|since| since > due);
        if reply.reached_ms.is_some_and(late) {
            return Err(Ignored::Late);
        }
        Ok((unit, x.clone()))
    }

    fn policy(&self, unit: Unit, x: &Exchange) -> RetryPolicy {
        self.target(unit.step, x.kind).retry
    }

    fn on_reply(&mut self, reply: Reply) -> Result<(), Ignored> {
        let (unit, x) = self.awaited(&reply)?;
        self.heard_from(unit, &x, reply.reached_ms.unwrap_or(self.now));
        match reply.status {
            ReplyStatus::Start | ReplyStatus::Heartbeat => {}
            ReplyStatus::Progress { percent, details } => {
                let event = match x.kind {
                    CommandKind::Action => EventType::StepProgress,
                    CommandKind::Compensation => EventType::CompensationProgress,
                };
                let progress = payload::Progress {
                    attempt: x.attempt,
                    progress: percent,
                    details: Some(details).filter(|d| !d.is_null()),
                };
                self.emit(event, Some(unit), &progress);
            }
            ReplyStatus::Completed { result } => self.on_completed(unit, &x, result),
            ReplyStatus::Failed { error, retryable } => {
                self.on_failed(unit, &x, Miss::Failed { error, retryable })
            }
            ReplyStatus::Unreadable { reason } => {
                let error = format!("unreadable reply: {reason}");
                let miss = Miss::Failed {
                    error,
                    retryable: true,
                };
                self.on_failed(unit, &x, miss)
            }
        }
        Ok(())
    }

    /// Any reply of the awaited attempt, reaching Redis at `at`, proves
    /// that its handler took it and is alive: the ack clock stops, the
    /// heartbeat clock starts again. The heartbeat clock moves only by a
    /// tenth of its length or more: each move is a write, and replies
    /// closer together than that (a handler reporting progress in a
    /// loop, or a flood) would otherwise cost one each. A handler beating
    /// every third of it moves it every time.
    fn heard_from(&mut self, unit: Unit, x: &Exchange, at: UnixMillis) {
        let heartbeat = self.target(unit.step, x.kind).clocks.heartbeat;
        let Some(Waiting::Reply {
            ack_by_ms,
            heartbeat_by_ms,
            ..
        }) = self
            .unit_state(unit)
            .and_then(UnitState::exchange)
            .map(|x| &x.waiting)
        else {
            return;
        };
        let (mut ack_by_ms, mut heartbeat_by_ms) = (*ack_by_ms, *heartbeat_by_ms);
        let mut moved = ack_by_ms.take().is_some();
        if let (Some(by), Some(every)) = (heartbeat_by_ms.as_mut(), heartbeat) {
            let every = ms(every);
            let next = at.saturating_add(every);
            if next >= by.saturating_add((every / 10).max(1)) {
                *by = next;
                moved = true;
            }
        }
        if !moved {
            return;
        }
        let state = self.st().work.get_mut(unit);
        if let Some(UnitState::Acting(x) | UnitState::Undoing(x)) = state {
            if let Waiting::Reply {
                ack_by_ms: ack,
                heartbeat_by_ms: heartbeat,
                ..
            } = &mut x.waiting
            {
                *ack = ack_by_ms;
                *heartbeat = heartbeat_by_ms;
            }
        }
    }

    /// Every clock due now: attempts timed out, backoffs over. Handled in
    /// unit order; each is looked at again before it is handled, since
    /// handling one (a failure that unwinds the saga) may end others.
    fn on_tick(&mut self) -> Result<(), Ignored> {
        let due: Vec<(Unit, Exchange)> = (self.state.work.exchanges())
            .filter(|(_, x)| x.waiting.due_ms() <= self.now)
            .map(|(u, x)| (u, x.clone()))
            .collect();
        let mut handled = false;
        for (unit, x) in due {
            let still = self.unit_state(unit).and_then(UnitState::exchange);
            if still.is_none_or(|now| *now != x) {
                continue;
            }
            handled |= self.on_due(unit, &x);
        }
        handled |= self.waits_due();
        match handled {
            true => Ok(()),
            false => Err(Ignored::NothingDue),
        }
    }

    /// A unit's exchange whose clock is due: true if it was handled.
    fn on_due(&mut self, unit: Unit, x: &Exchange) -> bool {
        if let Some((clock, at)) = x.waiting.expired(self.now) {
            let waited = at.saturating_sub(x.sent_at_ms);
            let reason = match clock {
                Clock::Completion => {
                    format!("attempt {} timed out after {waited} ms", x.attempt)
                }
                Clock::Ack => format!(
                    "attempt {} was not taken: no reply within its ack_timeout of {waited} ms",
                    x.attempt
                ),
                Clock::Heartbeat => format!(
                    "attempt {} went silent: no reply for its heartbeat_timeout of {} ms",
                    x.attempt,
                    self.target(unit.step, x.kind)
                        .clocks
                        .heartbeat
                        .map_or(0, ms)
                ),
            };
            self.on_failed(unit, x, Miss::TimedOut { reason, clock });
            return true;
        }
        match x.waiting {
            Waiting::Backoff { until_ms } if self.now >= until_ms => {
                match x.kind {
                    CommandKind::Action => self.send_action(unit, x.attempt + 1, x.timed_out),
                    CommandKind::Compensation => self.send_compensation(unit, x.attempt + 1),
                }
                self.advance();
                true
            }
            _ => false,
        }
    }

    fn on_completed(&mut self, unit: Unit, x: &Exchange, result: Value) {
        match x.kind {
            CommandKind::Action => {
                let kept = unit.branch.map(|_| Json::of(&result));
                if unit.branch.is_none() {
                    let name = self.step_name(unit.step).to_owned();
                    self.st().results.insert(name, Json::of(&result));
                }
                self.set_unit(unit, UnitState::Completed { result: kept });
                self.st().work.done.push(unit);
                // The events say the saga's state once they happened: the
                // completion that completes the last step completes the
                // saga.
                let last = self.state.phase == Phase::Running && self.all_steps_completed();
                if last {
                    self.st().phase = Phase::Completed {
                        ended_at_ms: self.now,
                    };
                }
                let completed = payload::AttemptCompleted {
                    attempt: x.attempt,
                    result,
                };
                self.emit(EventType::StepCompleted, Some(unit), &completed);
                let step_done = self.state.work.steps[&unit.step].completed();
                if unit.branch.is_some() && step_done {
                    self.complete_fan_out(unit.step);
                }
                if last {
                    return self.emit_saga_completed();
                }
            }
            CommandKind::Compensation => {
                self.set_unit(unit, UnitState::Undone);
                self.st().work.undone.push(unit);
                let completed = payload::AttemptCompleted {
                    attempt: x.attempt,
                    result,
                };
                self.emit(EventType::CompensationCompleted, Some(unit), &completed);
            }
        }
        self.advance();
    }
}
