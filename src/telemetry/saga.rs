//! A saga's spans and metrics, worked out from the effects of its
//! transitions once they are written.
//!
//! One trace per saga: a root span (`saga <name>`) from the start to the
//! terminal event, and under it a span per step attempt and per compensation
//! attempt, whose id is the parent id of that command's `traceparent`.
//! Handlers' spans hang under the attempt's.
//!
//! Spans are built when they end, from what the saga keeps (its ids and
//! start times are in its record), never before: a daemon that stops or
//! dies with a saga under way exports nothing of it, and the daemon that
//! resumes the saga ends the root span and the interrupted attempt's span
//! under their first ids and start times. Each span is thus exported once.
//! Progress replies seen by the daemon that ends an attempt become events of
//! its span.

use super::ids::with_ids;
use super::metrics;
use super::names::attr;
use crate::definition::SagaDefinition;
use crate::protocol::{self, CommandKind, EventType, SagaEvent, UnixMillis};
use crate::saga::{Effect, Exchange, SagaState, Unit, Waiting};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{global, Context, KeyValue};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one saga task knows of its saga's telemetry.
#[derive(Default)]
pub struct SagaTelemetry {
    /// The attempts under way, by step and branch: several at once when
    /// steps run in parallel or a fan-out runs branches.
    attempts: BTreeMap<(String, Option<u32>), Attempt>,
}

/// The attempt under way: its span, not built yet.
struct Attempt {
    span_id: protocol::SpanId,
    step: String,
    branch: Option<u32>,
    command: String,
    kind: CommandKind,
    attempt: u32,
    request_id: String,
    stream: String,
    started_ms: UnixMillis,
    progress: Vec<(UnixMillis, f64)>,
}

impl SagaTelemetry {
    /// For a saga taken over with attempts under way: their spans are
    /// ended by this daemon, under their first ids and start times.
    pub fn resumed(state: &SagaState, def: &SagaDefinition) -> Self {
        let attempt = |(unit, x): (Unit, &Exchange)| {
            if !matches!(x.waiting, Waiting::Reply { .. }) {
                return None;
            }
            let step = def.steps.get(unit.step)?;
            let (command, stream) = match x.kind {
                CommandKind::Action => (&step.command, &step.stream),
                CommandKind::Compensation => {
                    let comp = step.compensation.as_ref()?;
                    (&comp.command, &comp.stream)
                }
            };
            let attempt = Attempt {
                span_id: x.span_id.clone(),
                step: step.name.clone(),
                branch: unit.branch,
                command: command.clone(),
                kind: x.kind,
                attempt: x.attempt,
                request_id: x.request_id.to_string(),
                stream: stream.clone(),
                started_ms: x.sent_at_ms,
                progress: Vec::new(),
            };
            Some(((step.name.clone(), unit.branch), attempt))
        };
        let attempts = state.work.exchanges().filter_map(attempt).collect();
        Self { attempts }
    }

    /// The request id of the attempt under way of a step (or branch).
    pub fn request_id(&self, step: &str, branch: Option<u32>) -> Option<&str> {
        let attempt = self.attempts.get(&(step.to_owned(), branch))?;
        Some(attempt.request_id.as_str())
    }

    /// Takes in the effects of a transition just written; `state` is the
    /// state it wrote.
    pub fn observe(&mut self, state: &SagaState, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Send { stream, command } => {
                    let sent_at = (state.work.exchanges())
                        .find(|(_, x)| x.request_id == command.request_id)
                        .map_or(state.started_at_ms, |(_, x)| x.sent_at_ms);
                    let attempt = Attempt {
                        span_id: command.traceparent.span_id.clone(),
                        step: command.step.clone(),
                        branch: command.branch,
                        command: command.event_type.clone(),
                        kind: command.kind,
                        attempt: command.attempt,
                        request_id: command.request_id.to_string(),
                        stream: stream.clone(),
                        started_ms: sent_at,
                        progress: Vec::new(),
                    };
                    let key = (command.step.clone(), command.branch);
                    self.attempts.insert(key, attempt);
                }
                Effect::Emit(event) => self.on_event(state, event),
                _ => {}
            }
        }
    }

    fn on_event(&mut self, state: &SagaState, event: &SagaEvent) {
        let saga = state.saga.as_str();
        match event.event_type {
            EventType::SagaStarted => metrics::saga_started(saga),
            EventType::StepProgress | EventType::CompensationProgress => {
                if let Some(a) = self.attempts.get_mut(&key_of(event)) {
                    let percent = event.payload["progress"].as_f64().unwrap_or(0.0);
                    a.progress.push((event.timestamp, percent));
                }
            }
            EventType::StepCompleted if event.payload.get("signal").is_some() => {
                let signal = event.payload["signal"].as_str().unwrap_or("").to_owned();
                let waited = event.payload["waited_ms"].as_u64().unwrap_or(0);
                let step = event.step.clone().unwrap_or_default();
                let attributes = vec![
                    KeyValue::new(attr::STEP, step),
                    KeyValue::new(attr::SIGNAL, signal.clone()),
                ];
                wait_span(state, event, format!("wait {signal}"), waited, attributes);
            }
            EventType::StepCompleted | EventType::CompensationCompleted => {
                self.end_attempt(state, event, "completed", None);
            }
            EventType::StepFailed | EventType::CompensationFailed => {
                let error = event.payload["error"].as_str().unwrap_or("failed");
                self.end_attempt(state, event, "failed", Some(error.to_owned()));
            }
            EventType::StepTimedOut | EventType::CompensationTimedOut => {
                let attempt = event.payload["attempt"].as_u64().unwrap_or(0);
                let clock = match event.payload["timeout"].as_str() {
                    Some("ack") => "ack",
                    Some("heartbeat") => "heartbeat",
                    _ => "completion",
                };
                let step = event.step.as_deref().unwrap_or("");
                metrics::step_timed_out(saga, step, kind_of(event.event_type), clock);
                let why = format!("attempt {attempt} timed out ({clock} timeout)");
                self.end_attempt(state, event, "timed_out", Some(why));
            }
            EventType::StepRetrying | EventType::CompensationRetrying => {
                let kind = kind_of(event.event_type);
                metrics::step_retried(saga, event.step.as_deref().unwrap_or(""), kind);
            }
            EventType::SagaCompleted | EventType::SagaCompensated | EventType::SagaFailed => {
                self.attempts.clear();
                end_root(state, event);
            }
            EventType::OperatorAction if event.payload.get("refused").is_none() => {
                metrics::operator_action(event.payload["action"].as_str().unwrap_or(""));
                if let Some(paused_ms) = event.payload["paused_for_ms"].as_u64() {
                    let p = &event.payload;
                    let text = |k: &str| p[k].as_str().unwrap_or("").to_owned();
                    let attributes = vec![
                        KeyValue::new(attr::OPERATOR, text("paused_by")),
                        KeyValue::new(attr::REASON, text("pause_reason")),
                    ];
                    wait_span(state, event, "paused".into(), paused_ms, attributes);
                }
            }
            EventType::LockAcquired => {
                let waited = event.payload["waited_ms"].as_u64().unwrap_or(0);
                metrics::lock_taken(saga, Duration::from_millis(waited));
                let lock = event.payload["lock"].as_str().unwrap_or("").to_owned();
                let step = event.step.clone().unwrap_or_default();
                let attributes = vec![
                    KeyValue::new(attr::STEP, step),
                    KeyValue::new(attr::LOCK, lock.clone()),
                ];
                wait_span(state, event, format!("lock {lock}"), waited, attributes);
            }
            _ => {}
        }
    }

    fn end_attempt(
        &mut self,
        state: &SagaState,
        event: &SagaEvent,
        outcome: &'static str,
        error: Option<String>,
    ) {
        let Some(a) = self.attempts.remove(&key_of(event)) else {
            return;
        };
        let kind = kind_of(event.event_type);
        let elapsed = Duration::from_millis(event.timestamp.saturating_sub(a.started_ms));
        metrics::step_ended(&state.saga, &a.step, kind, outcome, elapsed);
        if !super::exporting_spans() {
            return;
        }
        let tracer = global::tracer(super::TRACER_NAME);
        let verb = match a.kind {
            CommandKind::Action => "step",
            CommandKind::Compensation => "compensate",
        };
        let mut attributes = saga_attributes(state);
        if let Some(branch) = a.branch {
            attributes.push(KeyValue::new(attr::BRANCH, i64::from(branch)));
        }
        attributes.extend([
            KeyValue::new(attr::STEP, a.step.clone()),
            KeyValue::new(attr::COMMAND, a.command),
            KeyValue::new(attr::KIND, kind),
            KeyValue::new(attr::ATTEMPT, i64::from(a.attempt)),
            KeyValue::new(attr::REQUEST_ID, a.request_id.clone()),
            KeyValue::new(attr::OUTCOME, outcome),
            KeyValue::new(attr::MESSAGING_SYSTEM, attr::REDIS),
            KeyValue::new(attr::MESSAGING_DESTINATION, a.stream),
            KeyValue::new(attr::MESSAGING_OPERATION, "publish"),
            KeyValue::new(attr::MESSAGING_OPERATION_TYPE, "send"),
            KeyValue::new(attr::MESSAGING_MESSAGE_ID, a.request_id),
        ]);
        let name = match a.branch {
            Some(branch) => format!("{verb} {}[{branch}]", a.step),
            None => format!("{verb} {}", a.step),
        };
        let builder = tracer
            .span_builder(name)
            .with_kind(SpanKind::Producer)
            .with_start_time(time(a.started_ms))
            .with_attributes(attributes);
        let parent = root_context(state);
        let mut span = with_ids(trace_id(state), span_id(&a.span_id), || {
            builder.start_with_context(&tracer, &parent)
        });
        for (at, percent) in a.progress {
            span.add_event_with_timestamp(
                "progress",
                time(at),
                vec![KeyValue::new(attr::PROGRESS, percent)],
            );
        }
        if let Some(error) = error {
            span.set_status(Status::error(error));
        }
        span.end_with_timestamp(time(event.timestamp));
    }
}

/// A span under the saga's for a time it waited (for a lock, a signal, or
/// while paused), ending at `event`, `waited_ms` long.
fn wait_span(
    state: &SagaState,
    event: &SagaEvent,
    name: String,
    waited_ms: u64,
    extra: Vec<KeyValue>,
) {
    if !super::exporting_spans() {
        return;
    }
    let tracer = global::tracer(super::TRACER_NAME);
    let mut attributes = saga_attributes(state);
    attributes.extend(extra);
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(time(event.timestamp.saturating_sub(waited_ms)))
        .with_attributes(attributes);
    let mut span = builder.start_with_context(&tracer, &root_context(state));
    span.end_with_timestamp(time(event.timestamp));
}

fn end_root(state: &SagaState, event: &SagaEvent) {
    if state.rescues > 0 {
        // The saga's span was exported when it failed; what an operator
        // set going again hangs under it, and it is not exported twice.
        let elapsed = Duration::from_millis(event.timestamp.saturating_sub(state.started_at_ms));
        return metrics::saga_ended(&state.saga, outcome_of(event.event_type), elapsed);
    }
    let (outcome, status) = match event.event_type {
        EventType::SagaCompleted => ("completed", Status::Ok),
        EventType::SagaCompensated => ("compensated", Status::error(failure(state))),
        _ => (
            "failed",
            Status::error(format!("compensation failed: {}", failure(state))),
        ),
    };
    let elapsed = Duration::from_millis(event.timestamp.saturating_sub(state.started_at_ms));
    metrics::saga_ended(&state.saga, outcome, elapsed);
    if !super::exporting_spans() {
        return;
    }
    let tracer = global::tracer(super::TRACER_NAME);
    let mut attributes = saga_attributes(state);
    attributes.push(KeyValue::new(attr::OUTCOME, outcome));
    attributes.push(KeyValue::new(
        attr::DEFINITION_VERSION,
        state.definition_version.clone(),
    ));
    let builder = tracer
        .span_builder(format!("saga {}", state.saga))
        .with_kind(SpanKind::Consumer)
        .with_start_time(time(state.started_at_ms))
        .with_attributes(attributes);
    // The caller's span, when the start carried a traceparent.
    let parent = match &state.parent_span_id {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id(state),
            span_id(parent),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let build = || builder.start_with_context(&tracer, &parent);
    let mut span = match &state.span_id {
        Some(id) => with_ids(trace_id(state), span_id(id), build),
        None => build(),
    };
    span.set_status(status);
    span.end_with_timestamp(time(event.timestamp));
}

/// The attempt an event is about: its step and branch.
fn key_of(event: &SagaEvent) -> (String, Option<u32>) {
    (event.step.clone().unwrap_or_default(), event.branch)
}

fn failure(state: &SagaState) -> String {
    state.failure().map_or_else(
        || "failed".to_owned(),
        |f| format!("step {} failed: {}", f.step, f.reason),
    )
}

/// The saga's root span, as the parent of its attempts' spans.
fn root_context(state: &SagaState) -> Context {
    let root = state
        .span_id
        .as_ref()
        .map_or(opentelemetry::trace::SpanId::INVALID, span_id);
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id(state),
        root,
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

fn saga_attributes(state: &SagaState) -> Vec<KeyValue> {
    vec![
        KeyValue::new(attr::SAGA_NAME, state.saga.clone()),
        KeyValue::new(attr::SAGA_ID, state.saga_id.to_string()),
        KeyValue::new(attr::CORRELATION_ID, state.correlation_id.to_string()),
    ]
}

fn kind_of(event_type: EventType) -> &'static str {
    match event_type {
        EventType::CompensationCompleted
        | EventType::CompensationFailed
        | EventType::CompensationTimedOut
        | EventType::CompensationRetrying
        | EventType::CompensationProgress
        | EventType::CompensationStarted => "compensation",
        _ => "action",
    }
}

fn trace_id(state: &SagaState) -> opentelemetry::trace::TraceId {
    opentelemetry::trace::TraceId::from_hex(state.trace_id.as_str())
        .unwrap_or(opentelemetry::trace::TraceId::INVALID)
}

fn span_id(id: &protocol::SpanId) -> opentelemetry::trace::SpanId {
    opentelemetry::trace::SpanId::from_hex(id.as_str())
        .unwrap_or(opentelemetry::trace::SpanId::INVALID)
}

fn time(ms: UnixMillis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn outcome_of(event_type: EventType) -> &'static str {
    match event_type {
        EventType::SagaCompleted => "completed",
        EventType::SagaCompensated => "compensated",
        _ => "failed",
    }
}
