//! One task per saga: feeds the state machine with replies and timer ticks
//! and performs its effects, each transition in one atomic write.

use super::store::{EntryRef, Transition};
use super::{now_ms, pause, Shared};
use crate::definition::SagaDefinition;
use crate::protocol::{EventType, SagaEvent, SagaId, SagaStatus, StartRequest, TraceId};
use crate::saga::{self, Effect, Event, RandomIds, SagaInit, SagaState};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// Starts a saga from a valid start entry and drives it to its end. The
/// permit is held for the saga's life.
pub(super) async fn start(
    shared: Arc<Shared>,
    def: Arc<SagaDefinition>,
    request: StartRequest,
    at: EntryRef,
    _permit: OwnedSemaphorePermit,
) {
    let saga_id = SagaId::generate();
    let span = tracing::info_span!(
        "saga",
        saga = %def.name,
        saga_id = %saga_id,
        correlation_id = %request.correlation_id,
    );
    async move {
        if let Some(key) = &request.idempotency_key {
            match claim_idempotency_key(&shared, &def.name, key, &saga_id).await {
                Some(Claim::Ours) => {}
                Some(Claim::Taken(existing)) => {
                    return duplicate(&shared, &def, &request, key, existing, &at).await
                }
                None => return,
            }
        }
        let trace_id = request
            .traceparent
            .as_ref()
            .map(|tp| tp.trace_id.clone())
            .or_else(|| {
                request
                    .correlation_id
                    .as_trace_id()
                    .and_then(|t| TraceId::parse(&t))
            })
            .unwrap_or_else(TraceId::generate);
        let init = SagaInit {
            saga_id: saga_id.clone(),
            correlation_id: request.correlation_id.clone(),
            trace_id,
            parent_span_id: request.traceparent.as_ref().map(|tp| tp.span_id.clone()),
            reply_stream: shared.settings.reply_stream(),
            input: request.input,
        };
        let (state, effects) = saga::start(&def, init, now_ms(), &mut RandomIds);
        tracing::info!(entry_id = %at.id, "saga started");
        let inbox = shared.router.register(saga_id.clone());
        drive(&shared, &def, state, effects, Some(&at), inbox).await;
        shared.router.remove(&saga_id);
    }
    .instrument(span)
    .await
}

async fn drive(
    shared: &Shared,
    def: &SagaDefinition,
    mut state: SagaState,
    effects: Vec<Effect>,
    ack: Option<&EntryRef>,
    mut inbox: super::router::Inbox,
) {
    let mut own_stream = OwnStreamGuard {
        shared,
        stream: None,
    };
    let Some(mut outcome) = perform(shared, &state, effects, ack).await else {
        return;
    };
    own_stream.follow(&state);
    while !outcome.finished {
        let sleep = outcome
            .timer
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            reply = inbox.recv() => match reply {
                Some(reply) => Event::Reply(reply),
                None => return,
            },
            _ = sleep_or_never(sleep) => Event::Tick,
        };
        let now = now_ms();
        let effects = saga::apply(&mut state, def, event, now, &mut RandomIds);
        if effects.is_empty() {
            // A tick that found nothing due (the clocks of the timer and of
            // the state differ by a little): wait for what is due next.
            outcome.timer = state.wake_at();
            continue;
        }
        let timer = outcome.timer;
        let Some(next) = perform(shared, &state, effects, None).await else {
            return;
        };
        own_stream.follow(&state);
        outcome = Outcome {
            timer: next.timer.or(timer),
            ..next
        };
    }
    let status = state.phase.status();
    tracing::info!(status = status.as_str(), "saga ended");
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

struct Outcome {
    timer: Option<u64>,
    finished: bool,
}

/// Keeps the reply reader on the per-request reply stream of the saga's
/// current exchange, and off it once the exchange is over.
struct OwnStreamGuard<'a> {
    shared: &'a Shared,
    stream: Option<String>,
}

impl OwnStreamGuard<'_> {
    fn follow(&mut self, state: &SagaState) {
        let now = state
            .current
            .as_ref()
            .and_then(|x| x.own_reply_stream.clone());
        if now != self.stream {
            if let Some(old) = self.stream.take() {
                self.shared.own_streams.remove(&old);
            }
            self.stream = now;
        }
    }
}

impl Drop for OwnStreamGuard<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.shared.own_streams.remove(&stream);
        }
    }
}

/// How long a per-request reply stream outlives its command's deadline: late
/// replies land in it, unread, and go with it.
const OWN_STREAM_GRACE_SECS: u64 = 600;

/// Writes one transition's effects in one go. `None` when the daemon
/// stopped before the write could be made.
async fn perform(
    shared: &Shared,
    state: &SagaState,
    effects: Vec<Effect>,
    ack: Option<&EntryRef>,
) -> Option<Outcome> {
    let mut outcome = Outcome {
        timer: None,
        finished: false,
    };
    let mut persist = false;
    let mut commands = Vec::new();
    let mut events = Vec::new();
    let mut own_streams = Vec::new();
    for effect in &effects {
        match effect {
            Effect::Persist => persist = true,
            Effect::Send { stream, command } => {
                if command.reply_stream != state.reply_stream {
                    // Followed by the reader before the command exists, so
                    // no reply can come before the reader looks for it.
                    shared.own_streams.add(&command.reply_stream);
                    let ttl = (command.deadline_ms.saturating_sub(now_ms())) / 1000
                        + OWN_STREAM_GRACE_SECS;
                    own_streams.push((command.reply_stream.as_str(), ttl));
                }
                commands.push((stream.as_str(), command));
            }
            Effect::Emit(event) => {
                log_event(event);
                events.push(event);
            }
            Effect::ArmTimer { at_ms } => outcome.timer = Some(*at_ms),
            Effect::Finish => outcome.finished = true,
        }
    }
    let transition = Transition {
        state: persist.then_some(state),
        commands,
        events,
        ack,
        own_reply_streams: own_streams,
    };
    write_until_done(shared, &transition)
        .await
        .then_some(outcome)
}

fn log_event(event: &SagaEvent) {
    tracing::debug!(
        event_type = event.event_type.as_str(),
        status = event.status.as_str(),
        step = event.step.as_deref().unwrap_or(""),
        payload = %event.payload,
        "saga event"
    );
}

/// Writes a transition, retrying with capped backoff while Redis fails.
/// False only if the daemon stopped first; the state then stays as last
/// persisted, and the entry unacknowledged.
pub(super) async fn write_until_done(shared: &Shared, transition: &Transition<'_>) -> bool {
    let mut delay = Duration::from_millis(50);
    let mut conn = shared.conn.clone();
    loop {
        match transition.write(&mut conn, &shared.settings).await {
            Ok(()) => {
                shared.writes.succeeded();
                return true;
            }
            Err(e) => {
                shared.writes.failed(&e);
                if !pause(&shared.shutdown, delay).await {
                    return false;
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

enum Claim {
    Ours,
    Taken(String),
}

/// Claims an idempotency key for this saga: `SET NX`, so two daemons
/// taking the same key at once cannot both win.
async fn claim_idempotency_key(
    shared: &Shared,
    saga: &str,
    key: &str,
    saga_id: &SagaId,
) -> Option<Claim> {
    let redis_key = shared.settings.idempotency_key(saga, key);
    let mut conn = shared.conn.clone();
    let mut delay = Duration::from_millis(50);
    loop {
        let claimed: redis::RedisResult<(Option<String>, Option<String>)> = redis::pipe()
            .cmd("SET")
            .arg(&redis_key)
            .arg(saga_id.as_str())
            .arg("NX")
            .arg("EX")
            .arg(shared.settings.retention.as_secs().max(1))
            .cmd("GET")
            .arg(&redis_key)
            .query_async(&mut conn)
            .await;
        match claimed {
            Ok((Some(_), _)) => return Some(Claim::Ours),
            Ok((None, existing)) => return Some(Claim::Taken(existing.unwrap_or_default())),
            Err(e) => {
                shared.writes.failed(&e);
                if !pause(&shared.shutdown, delay).await {
                    return None;
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn duplicate(
    shared: &Shared,
    def: &SagaDefinition,
    request: &StartRequest,
    key: &str,
    existing: String,
    at: &EntryRef,
) {
    tracing::info!(idempotency_key = key, existing_saga_id = %existing, "duplicate start ignored");
    let event = SagaEvent {
        correlation_id: request.correlation_id.clone(),
        saga_id: None,
        saga: def.name.clone(),
        event_type: EventType::SagaDuplicate,
        status: SagaStatus::Duplicate,
        step: None,
        payload: json!({ "entry_id": at.id, "idempotency_key": key, "existing_saga_id": existing }),
        timestamp: now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ack: Some(at),
        ..Default::default()
    };
    write_until_done(shared, &transition).await;
}
