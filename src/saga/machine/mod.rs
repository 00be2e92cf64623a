//! The transition function: `start` makes a saga, `apply` moves it on.

use super::ids::IdSource;
use super::state::{Clock, Exchange, Phase, SagaState, Waiting};
use crate::definition::template::Context;
use crate::definition::{Clocks, ReplyMode, RetryPolicy, SagaDefinition, Template};
use crate::protocol::{
    Command, CommandKind, CorrelationId, EventType, Json, Reply, ReplyStatus, SagaEvent, SagaId,
    SpanId, TraceId, TraceParent, UnixMillis,
};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// What happens to a saga. Events are moved once from the reader to the
/// machine, never stored in bulk, so the size gap between variants is fine.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A reply for this saga arrived (the router matched its `saga_id` or
    /// `request_id`; whether it is the awaited one is decided here).
    Reply(Reply),
    /// Time passed: a deadline or a backoff may be due.
    Tick,
    /// An operator's request: cancel, retry, skip, abandon.
    Operator(OperatorRequest),
}

/// What the driver must do, in order, after a transition.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Write the new state, together with the commands and events of this
    /// transition.
    Persist,
    Send {
        stream: String,
        command: Command,
    },
    Emit(SagaEvent),
    /// Deliver a [`Event::Tick`] at this time.
    ArmTimer {
        at_ms: UnixMillis,
    },
    /// The saga has ended; nothing more will happen to it.
    Finish,
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

/// Creates a saga and sends its first command.
pub fn start(
    def: &SagaDefinition,
    init: SagaInit,
    now: UnixMillis,
    ids: &mut dyn IdSource,
) -> (SagaState, Vec<Effect>) {
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
        current: None,
        failure: None,
        to_undo: Vec::new(),
        stuck_at: None,
        abandoned: false,
        rescues: 0,
        parked: None,
        undone: Vec::new(),
        skipped: Vec::new(),
        started_at_ms: now,
        ended_at_ms: None,
    };
    let mut m = Machine::new(&mut state, def, now, ids);
    m.emit(
        EventType::SagaStarted,
        None,
        json!({ "input": init.input, "trace_id": m.state.trace_id }),
    );
    m.send_action(0, 1, false);
    let effects = m.finish();
    (state, effects)
}

/// Moves a saga on by one event.
pub fn apply(
    state: &mut SagaState,
    def: &SagaDefinition,
    event: Event,
    now: UnixMillis,
    ids: &mut dyn IdSource,
) -> Vec<Effect> {
    // Operators may rescue a saga that failed; nothing else moves an ended
    // saga.
    if state.phase.is_terminal() && !matches!(event, Event::Operator(_)) {
        return Vec::new();
    }
    let mut m = Machine::new(state, def, now, ids);
    match event {
        Event::Reply(reply) => m.on_reply(reply),
        Event::Tick => m.on_tick(),
        Event::Operator(request) => m.on_operator(request),
    }
    m.finish()
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
) -> Vec<Effect> {
    if state.phase.is_terminal() {
        return Vec::new();
    }
    let mut m = Machine::new(state, def, now, ids);
    m.park(reason, replies);
    m.finish()
}

struct Machine<'a> {
    state: &'a mut SagaState,
    def: &'a SagaDefinition,
    now: UnixMillis,
    ids: &'a mut dyn IdSource,
    effects: Vec<Effect>,
    /// Set when the state changed without an event saying so: a reply
    /// that moved an attempt's clocks on.
    touched: bool,
}

mod failure;
mod operator;

pub use operator::{Action, OperatorRequest};

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
            touched: false,
        }
    }

    /// Orders the effects: persist first, then commands and events, timer
    /// and finish last. The driver writes the first three in one go.
    fn finish(mut self) -> Vec<Effect> {
        if self.effects.is_empty() && !self.touched {
            return self.effects;
        }
        // Progress, and an operator's request refused, are recorded on the
        // audit stream but change no state.
        let changed = self.touched
            || !self.effects.iter().all(|e| {
            matches!(e, Effect::Emit(ev) if matches!(
                ev.event_type,
                EventType::StepProgress | EventType::CompensationProgress
            ) || (ev.event_type == EventType::OperatorAction && ev.payload.get("refused").is_some()))
        });
        if changed {
            self.effects.insert(0, Effect::Persist);
        }
        let terminal = self.state.phase.is_terminal();
        if let Some(at_ms) = self.state.wake_at().filter(|_| changed && !terminal) {
            self.effects.push(Effect::ArmTimer { at_ms });
        }
        if terminal {
            self.effects.push(Effect::Finish);
        }
        self.effects
    }

    fn emit(&mut self, event_type: EventType, step: Option<&str>, payload: Value) {
        self.effects.push(Effect::Emit(SagaEvent {
            correlation_id: self.state.correlation_id.clone(),
            saga_id: Some(self.state.saga_id.clone()),
            saga: self.state.saga.clone(),
            event_type,
            status: self.state.phase.status(),
            step: step.map(str::to_owned),
            payload,
            timestamp: self.now,
        }));
    }

    fn context_payload(&self, with_failure: bool) -> Value {
        let steps: Map<String, Value> = self
            .state
            .results
            .iter()
            .map(|(name, result)| (name.clone(), json!({ "result": result.value() })))
            .collect();
        let mut ctx = json!({ "input": self.state.input.value(), "steps": steps });
        if let (true, Some(f)) = (with_failure, &self.state.failure) {
            ctx["failure"] = json!({ "step": f.step, "reason": f.reason });
        }
        ctx
    }

    fn render(&self, template: Option<&Template>, kind: CommandKind) -> Result<Value, String> {
        let compensation = kind == CommandKind::Compensation;
        let Some(template) = template else {
            return Ok(self.context_payload(compensation));
        };
        let failure = self
            .state
            .failure
            .as_ref()
            .map(|f| (f.step.as_str(), f.reason.as_str()));
        let ctx = Context {
            input: &self.state.input,
            results: &self.state.results,
            saga_id: self.state.saga_id.as_str(),
            correlation_id: self.state.correlation_id.as_str(),
            failure,
            item: None,
        };
        template.render(&ctx, compensation).map_err(|e| e.0)
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

    /// Sends attempt `attempt` of step `index`'s action.
    fn send_action(&mut self, index: usize, attempt: u32, timed_out: bool) {
        let target = self.target(index, CommandKind::Action);
        match self.render(target.input, CommandKind::Action) {
            Ok(payload) => self.send(index, CommandKind::Action, attempt, timed_out, payload),
            Err(reason) => {
                // A payload that cannot be built will not be buildable on a
                // retry either: the step fails at once.
                let name = self.def.steps[index].name.clone();
                let reason = format!("cannot build the input of step `{name}`: {reason}");
                self.state.current = None;
                self.fail_saga(index, reason.clone(), timed_out);
                self.emit(
                    EventType::StepFailed,
                    Some(&name),
                    json!({ "attempt": attempt, "error": reason, "retryable": false }),
                );
                self.next_compensation();
            }
        }
    }

    /// Sends attempt `attempt` of the compensation of step `index`.
    fn send_compensation(&mut self, index: usize, attempt: u32) {
        let target = self.target(index, CommandKind::Compensation);
        let payload = self
            .render(target.input, CommandKind::Compensation)
            .expect("compensation templates render leniently");
        self.send(index, CommandKind::Compensation, attempt, false, payload);
    }

    fn send(
        &mut self,
        index: usize,
        kind: CommandKind,
        attempt: u32,
        timed_out: bool,
        payload: Value,
    ) {
        let target = self.target(index, kind);
        let request_id = self.ids.request_id();
        let span_id = self.ids.span_id();
        let deadline_ms = self.now.saturating_add(ms(target.timeout));
        let ack_timeout_ms = target.clocks.ack.map(ms);
        let heartbeat_timeout_ms = target.clocks.heartbeat.map(ms);
        let step = self.def.steps[index].name.clone();
        let reply_stream = match target.replies {
            ReplyMode::Shared => self.state.reply_stream.clone(),
            ReplyMode::PerRequest => format!("{}:{request_id}", self.state.reply_stream),
        };
        self.state.current = Some(Exchange {
            step: index,
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
        });
        let event = match kind {
            CommandKind::Action => EventType::StepStarted,
            CommandKind::Compensation => EventType::CompensationStarted,
        };
        let mut started = json!({
            "attempt": attempt,
            "request_id": request_id,
            "kind": kind.as_str(),
            "command": target.command,
            "stream": target.stream,
            "reply_stream": reply_stream,
            "span_id": span_id,
            "deadline_ms": deadline_ms,
        });
        if let Some(t) = ack_timeout_ms {
            started["ack_timeout_ms"] = t.into();
        }
        if let Some(t) = heartbeat_timeout_ms {
            started["heartbeat_timeout_ms"] = t.into();
        }
        self.emit(event, Some(&step), started);
        let command = Command {
            correlation_id: self.state.correlation_id.clone(),
            saga_id: self.state.saga_id.clone(),
            request_id,
            traceparent: TraceParent::new(self.state.trace_id.clone(), span_id),
            event_type: target.command.to_owned(),
            step,
            kind,
            attempt,
            reply_stream,
            payload,
            deadline_ms,
            timestamp: self.now,
            ack_timeout_ms,
            heartbeat_timeout_ms,
        };
        self.effects.push(Effect::Send {
            stream: target.stream.to_owned(),
            command,
        });
    }

    /// Is this reply the final word (or progress) on the exchange we await?
    fn awaited(&self, reply: &Reply) -> Option<Exchange> {
        let current = self.state.current.as_ref()?;
        if !matches!(current.waiting, Waiting::Reply { .. }) {
            return None;
        }
        if reply
            .saga_id
            .as_ref()
            .is_some_and(|s| *s != self.state.saga_id)
        {
            return None;
        }
        // A reply that reached Redis after one of the attempt's clocks ran
        // out is late: the timeout wins, even if it has not been seen yet.
        if reply
            .reached_ms
            .is_some_and(|at| at > current.waiting.due_ms())
        {
            return None;
        }
        let matches = match &reply.request_id {
            Some(id) => *id == current.request_id,
            // The original handlers' replies: matched by the command name
            // they repeat, to the one outstanding command of the saga.
            None => reply.event_type.as_deref() == Some(self.command_name(current)),
        };
        matches.then(|| current.clone())
    }

    fn command_name(&self, x: &Exchange) -> &'a str {
        self.target(x.step, x.kind).command
    }

    fn policy(&self, x: &Exchange) -> RetryPolicy {
        self.target(x.step, x.kind).retry
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(x) = self.awaited(&reply) else {
            return;
        };
        let step = self.def.steps[x.step].name.clone();
        self.heard_from(&x, reply.reached_ms.unwrap_or(self.now));
        match reply.status {
            ReplyStatus::Start | ReplyStatus::Heartbeat => {}
            ReplyStatus::Progress { percent, details } => {
                let event = match x.kind {
                    CommandKind::Action => EventType::StepProgress,
                    CommandKind::Compensation => EventType::CompensationProgress,
                };
                let mut payload = json!({ "attempt": x.attempt, "progress": percent });
                if !details.is_null() {
                    payload["details"] = details;
                }
                self.emit(event, Some(&step), payload);
            }
            ReplyStatus::Completed { result } => self.on_completed(&x, step, result),
            ReplyStatus::Failed { error, retryable } => {
                self.on_failed(&x, step, Miss::Failed { error, retryable })
            }
            ReplyStatus::Unreadable { reason } => {
                let error = format!("unreadable reply: {reason}");
                self.on_failed(
                    &x,
                    step,
                    Miss::Failed {
                        error,
                        retryable: true,
                    },
                )
            }
        }
    }

    /// Any reply of the awaited attempt, reaching Redis at `at`, proves
    /// that its handler took it and is alive: the ack clock stops, the
    /// heartbeat clock starts again. The heartbeat clock moves only by a
    /// tenth of its length or more: each move is a write, and replies
    /// closer together than that (a handler reporting progress in a
    /// loop, or a flood) would otherwise cost one each. A handler beating
    /// every third of it moves it every time.
    fn heard_from(&mut self, x: &Exchange, at: UnixMillis) {
        let heartbeat = self.target(x.step, x.kind).clocks.heartbeat;
        let Some(Exchange {
            waiting:
                Waiting::Reply {
                    ack_by_ms,
                    heartbeat_by_ms,
                    ..
                },
            ..
        }) = self.state.current.as_mut()
        else {
            return;
        };
        if ack_by_ms.take().is_some() {
            self.touched = true;
        }
        if let (Some(by), Some(every)) = (heartbeat_by_ms.as_mut(), heartbeat) {
            let every = ms(every);
            let next = at.saturating_add(every);
            if next >= by.saturating_add((every / 10).max(1)) {
                *by = next;
                self.touched = true;
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(x) = self.state.current.clone() else {
            return;
        };
        if let Some((clock, at)) = x.waiting.expired(self.now) {
            let step = self.def.steps[x.step].name.clone();
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
                    self.target(x.step, x.kind).clocks.heartbeat.map_or(0, ms)
                ),
            };
            self.on_failed(&x, step, Miss::TimedOut { reason, clock });
            return;
        }
        if let Waiting::Backoff { until_ms } = x.waiting {
            if self.now >= until_ms {
                match x.kind {
                    CommandKind::Action => self.send_action(x.step, x.attempt + 1, x.timed_out),
                    CommandKind::Compensation => self.send_compensation(x.step, x.attempt + 1),
                }
            }
        }
    }

    fn on_completed(&mut self, x: &Exchange, step: String, result: Value) {
        self.state.current = None;
        match x.kind {
            CommandKind::Action => {
                self.state.results.insert(step.clone(), Json::of(&result));
                let last = x.step + 1 == self.def.steps.len();
                if last {
                    self.state.phase = Phase::Completed;
                    self.state.ended_at_ms = Some(self.now);
                }
                self.emit(
                    EventType::StepCompleted,
                    Some(&step),
                    json!({ "attempt": x.attempt, "result": result }),
                );
                if last {
                    let results: Map<String, Value> = (self.state.results.iter())
                        .map(|(name, result)| (name.clone(), result.value()))
                        .collect();
                    self.emit(
                        EventType::SagaCompleted,
                        None,
                        json!({ "results": results }),
                    );
                } else {
                    self.send_action(x.step + 1, 1, false);
                }
            }
            CommandKind::Compensation => {
                self.state.undone.push(step.clone());
                self.emit(
                    EventType::CompensationCompleted,
                    Some(&step),
                    json!({ "attempt": x.attempt, "result": result }),
                );
                self.next_compensation();
            }
        }
    }
}
