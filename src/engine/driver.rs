//! One task per saga: feeds the state machine with replies and timer ticks
//! and performs its effects, each transition in one fenced, atomic write.
//! A saga task starts from a start entry ([`start`]) or from the record of a
//! saga taken over from another daemon ([`resume`]).

use super::definitions;
use super::idempotency::{claim_idempotency_key, duplicate, Claim};
use super::lease::Epoch;
use super::router::{Inbound, Inbox};
use super::store::{EntryRef, Fence, Transition, Written};
use super::{now_ms, pause, Shared};
use crate::definition::SagaDefinition;
use crate::protocol::{SagaEvent, SagaId, StartRequest, TraceId};
use crate::saga::{self, Effect, Event, OperatorRequest, RandomIds, SagaInit, SagaState};
use crate::telemetry::metrics::InFlight;
use crate::telemetry::saga::SagaTelemetry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use tracing::Instrument;

/// Starts a saga from a valid start entry and drives it to its end. The
/// permit is held for the saga's life.
pub(super) async fn start(
    shared: Arc<Shared>,
    def: Arc<SagaDefinition>,
    request: StartRequest,
    at: EntryRef,
    permit: OwnedSemaphorePermit,
) {
    let saga_id = SagaId::for_start(&at.stream, &at.id);
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
    let span = saga_span(
        &def.name,
        saga_id.as_str(),
        &request.correlation_id,
        &trace_id,
    );
    async move {
        if let Some(key) = &request.idempotency_key {
            match claim_idempotency_key(&shared, &def.name, key, &saga_id).await {
                Some(Claim::Ours) => {}
                // This very start, taken again after a crash.
                Some(Claim::Taken(existing)) if existing == saga_id.as_str() => {}
                Some(Claim::Taken(existing)) => {
                    return duplicate(&shared, &def, &request, key, existing, &at).await
                }
                None => return,
            }
        }
        let init = SagaInit {
            saga_id: saga_id.clone(),
            correlation_id: request.correlation_id.clone(),
            trace_id,
            parent_span_id: request.traceparent.as_ref().map(|tp| tp.span_id.clone()),
            reply_stream: shared.settings.reply_stream(),
            input: request.input,
        };
        let (state, effects) = saga::start(&def, init, now_ms(), &mut RandomIds);
        let Some(inbox) = shared.router.register(saga_id.clone()) else {
            return; // this daemon drives it already
        };
        let mut saga = Driven::new(&shared, &def, state, 0, shared.epoch(), permit);
        saga.telemetry = SagaTelemetry::default();
        match Box::pin(saga.perform(effects, Some(&at), None)).await {
            Some(Written::Done | Written::AlreadyDone) => {
                tracing::info!(entry_id = %at.id, "saga started");
                saga.drive(inbox).await;
            }
            // Started already by another daemon that took this entry too.
            Some(Written::NotOurs) => tracing::info!(entry_id = %at.id, "saga started elsewhere"),
            None => {}
        }
        shared.router.remove(&saga_id);
    }
    .instrument(span)
    .await
}

/// Resumes a saga taken over from another daemon, from its record.
pub(super) async fn resume(shared: Arc<Shared>, saga_id: String, epoch: Arc<Epoch>) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let record = match load(&shared, &saga_id).await {
        Ok(Some(record)) => record,
        Ok(None) => return tracing::warn!(%saga_id, "a saga taken over has no record; skipped"),
        Err(e) => return tracing::error!(%saga_id, error = %e, "cannot read a saga taken over"),
    };
    let (mut state, seq) = record;
    let def = match definitions::resolve(&shared, &state.saga, &state.definition_version).await {
        Ok(def) => def,
        Err(why) => {
            return tracing::error!(%saga_id, saga = %state.saga, %why, "a saga taken over cannot be resumed; left as it is")
        }
    };
    let span = saga_span(&def.name, &saga_id, &state.correlation_id, &state.trace_id);
    async move {
        // Its next commands name this daemon's reply stream; the attempt
        // under way keeps its own until it ends.
        state.reply_stream = shared.settings.reply_stream();
        let Some(inbox) = shared.router.register(state.saga_id.clone()) else {
            return;
        };
        tracing::info!(phase = ?state.phase, "saga resumed");
        let id = state.saga_id.clone();
        let mut saga = Driven::new(&shared, &def, state, seq, epoch, permit);
        saga.follow_reply_stream();
        saga.drive(inbox).await;
        shared.router.remove(&id);
    }
    .instrument(span)
    .await
}

/// Takes up a saga stuck on a failed compensation, which no daemon drives,
/// to carry out an operator's request about it. The saga is claimed first
/// (its owner changed from the one read, atomically), so that of the daemons
/// that all read the request, one acts.
pub(super) async fn adopt(shared: Arc<Shared>, saga_id: String, request: OperatorRequest) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let (mut state, seq) = match load(&shared, &saga_id).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return tracing::warn!(%saga_id, "an operator's request names no saga here; ignored")
        }
        Err(e) => {
            return tracing::error!(%saga_id, error = %e, "cannot read a saga for an operator's request")
        }
    };
    if state.phase != saga::Phase::Failed {
        // Ended otherwise, or driven by a daemon, which takes the request.
        return;
    }
    let epoch = shared.epoch();
    match claim(&shared, &saga_id, &epoch.owner).await {
        Ok(true) => {}
        Ok(false) => return, // another daemon took it
        Err(e) => {
            return tracing::error!(%saga_id, error = %e, "cannot claim a saga for an operator's request")
        }
    }
    let def = match definitions::resolve(&shared, &state.saga, &state.definition_version).await {
        Ok(def) => def,
        Err(why) => {
            return tracing::error!(%saga_id, %why, "an operator's request cannot be carried out")
        }
    };
    let span = saga_span(&def.name, &saga_id, &state.correlation_id, &state.trace_id);
    async move {
        state.reply_stream = shared.settings.reply_stream();
        let Some(inbox) = shared.router.register(state.saga_id.clone()) else {
            return;
        };
        tracing::info!(action = request.action.name(), by = %request.by, "operator's request");
        let id = state.saga_id.clone();
        let mut saga = Driven::new(&shared, &def, state, seq, epoch, permit);
        let effects = saga::apply(
            &mut saga.state,
            saga.def,
            Event::Operator(request),
            now_ms(),
            &mut RandomIds,
        );
        let written = Box::pin(saga.perform(effects, None, None)).await;
        if matches!(written, Some(Written::Done | Written::AlreadyDone)) {
            saga.drive(inbox).await;
        }
        shared.router.remove(&id);
    }
    .instrument(span)
    .await
}

/// Makes `owner` the owner of a saga record still owned by whoever owned it
/// when read, and adds the saga to `owner`'s set for takeover. False when
/// another daemon claimed it first.
async fn claim(shared: &Shared, saga_id: &str, owner: &str) -> redis::RedisResult<bool> {
    let key = shared.settings.saga_key(saga_id);
    let mut conn = shared.conn.clone();
    let before: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("owner")
        .query_async(&mut conn)
        .await?;
    let claimed: i64 = CLAIM
        .key(&key)
        .key(shared.settings.owned_key(owner))
        .arg(before.unwrap_or_default())
        .arg(owner)
        .arg(saga_id)
        .invoke_async(&mut conn)
        .await?;
    Ok(claimed == 1)
}

static CLAIM: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if (redis.call('HGET', KEYS[1], 'owner') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
redis.call('PERSIST', KEYS[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
",
    )
});

/// The span every log line about a saga is written in.
fn saga_span(
    saga: &str,
    saga_id: &str,
    correlation_id: &crate::protocol::CorrelationId,
    trace_id: &TraceId,
) -> tracing::Span {
    tracing::info_span!(
        "saga",
        saga = %saga,
        saga_id = %saga_id,
        correlation_id = correlation_id.as_str(),
        trace_id = %trace_id,
    )
}

/// A saga's record: its state and the number of its last transition.
async fn load(shared: &Shared, saga_id: &str) -> redis::RedisResult<Option<(SagaState, u64)>> {
    let mut conn = shared.conn.clone();
    let (state, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(shared.settings.saga_key(saga_id))
        .arg("state")
        .arg("seq")
        .query_async(&mut conn)
        .await?;
    let Some(state) = state else { return Ok(None) };
    match serde_json::from_str(&state) {
        Ok(state) => Ok(Some((state, seq.unwrap_or(0)))),
        Err(e) => {
            tracing::error!(%saga_id, error = %e, "a saga record cannot be read; left as it is");
            Ok(None)
        }
    }
}

/// A saga being driven by this daemon.
struct Driven<'a> {
    shared: &'a Shared,
    def: &'a SagaDefinition,
    state: SagaState,
    /// Number of the last transition written.
    seq: u64,
    epoch: Arc<Epoch>,
    timer: Option<u64>,
    /// A reply stream other than this daemon's that the current attempt's
    /// replies go to, followed by the reply reader while it is awaited.
    followed: Option<String>,
    /// Its spans and metrics, from the transitions written.
    telemetry: SagaTelemetry,
    _in_flight: InFlight,
    _permit: OwnedSemaphorePermit,
}

impl<'a> Driven<'a> {
    fn new(
        shared: &'a Shared,
        def: &'a SagaDefinition,
        state: SagaState,
        seq: u64,
        epoch: Arc<Epoch>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let timer = state.wake_at();
        // A saga resumed with an attempt under way ends that attempt's span.
        let telemetry = SagaTelemetry::resumed(&state, def);
        Self {
            shared,
            def,
            state,
            seq,
            epoch,
            timer,
            followed: None,
            telemetry,
            _in_flight: InFlight::enter(),
            _permit: permit,
        }
    }

    async fn drive(&mut self, mut inbox: Inbox) {
        while !self.state.phase.is_terminal() {
            let sleep = self
                .timer
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            let event = tokio::select! {
                // Replies before ticks: a reply that came in time wins over
                // a deadline seen at the same moment.
                biased;
                _ = self.epoch.cancel.cancelled() => return,
                inbound = inbox.recv() => match inbound {
                    Some(inbound) => event_of(inbound),
                    None => return,
                },
                _ = sleep_or_never(sleep) => Event::Tick,
            };
            if event == Event::Tick && self.awaiting_reply() && !self.shared.replies_readable() {
                // The reply may be in Redis, unread: hold the timeout until
                // the reader reads again.
                self.timer = Some(now_ms() + HOLD_TIMEOUT_FOR);
                continue;
            }
            // The write slot is taken before the transition is worked out:
            // sagas waiting for one (a burst of replies) hold only their
            // replies, not the commands and events those would make.
            let slot = self
                .shared
                .write_slots
                .acquire()
                .await
                .expect("never closed");
            let mut effects =
                saga::apply(&mut self.state, self.def, event, now_ms(), &mut RandomIds);
            self.take_waiting_replies(&mut inbox, &mut effects);
            if effects.is_empty() {
                // A tick that found nothing due (the clocks of the timer and
                // of the state differ by a little): wait for what is due next.
                self.timer = self.state.wake_at();
                continue;
            }
            // Boxed: the write's state lives on the heap only while it is
            // under way, so that an idle saga's task stays small.
            match Box::pin(self.perform(effects, None, Some(slot))).await {
                Some(Written::Done | Written::AlreadyDone) => {}
                Some(Written::NotOurs) => {
                    return tracing::warn!("saga taken over by another daemon; this one lets go")
                }
                None => return,
            }
        }
        tracing::info!(status = self.state.phase.status().as_str(), "saga ended");
    }

    /// Applies the replies already waiting in the inbox, so that their
    /// transitions are written together with the one under way: a handler's
    /// `start`, `progress` and `completed`, read in one batch, cost one
    /// write instead of three. The effects are kept in order; the state
    /// written is the last one, under one transition number.
    fn take_waiting_replies(&mut self, inbox: &mut Inbox, effects: &mut Vec<Effect>) {
        for _ in 0..MERGED_REPLIES_MAX {
            if self.state.phase.is_terminal() {
                return;
            }
            let Ok(inbound) = inbox.try_recv() else {
                return;
            };
            let more = saga::apply(
                &mut self.state,
                self.def,
                event_of(inbound),
                now_ms(),
                &mut RandomIds,
            );
            effects.extend(more);
        }
    }

    fn awaiting_reply(&self) -> bool {
        matches!(
            self.state.current.as_ref().map(|x| &x.waiting),
            Some(saga::Waiting::Reply { .. })
        )
    }

    /// Writes one transition's effects in one go. `None` when the daemon
    /// stopped before the write could be made.
    async fn perform(
        &mut self,
        effects: Vec<Effect>,
        ack: Option<&EntryRef>,
        slot: Option<SemaphorePermit<'_>>,
    ) -> Option<Written> {
        // The reader follows a new attempt's own reply stream before its
        // command exists, so no reply can come before the reader looks.
        self.follow_reply_stream();
        let mut persist = false;
        let mut commands = Vec::new();
        let mut events = Vec::new();
        let mut own_streams = Vec::new();
        // The attempt each event is about: the one under way, until the
        // transition sends the next.
        let mut request_id = self.telemetry.request_id().map(str::to_owned);
        for effect in &effects {
            match effect {
                Effect::Persist => persist = true,
                Effect::Send { stream, command } => {
                    if command.reply_stream != self.state.reply_stream {
                        let ttl = command.deadline_ms.saturating_sub(now_ms()) / 1000
                            + OWN_STREAM_GRACE_SECS;
                        own_streams.push((command.reply_stream.as_str(), ttl));
                    }
                    request_id = Some(command.request_id.to_string());
                    commands.push((stream.as_str(), command));
                }
                Effect::Emit(event) => {
                    log_event(event, request_id.as_deref());
                    events.push(event);
                }
                Effect::ArmTimer { at_ms } => self.timer = Some(*at_ms),
                Effect::Finish => {}
            }
        }
        let transition = Transition {
            saga: Some((
                self.state.saga_id.as_str(),
                Fence {
                    owner: &self.epoch.owner,
                    seq: self.seq + 1,
                },
            )),
            state: persist.then_some(&self.state),
            commands,
            events,
            ack,
            own_reply_streams: own_streams,
        };
        let written = write_until_done(self.shared, &transition, slot).await;
        drop(transition);
        if matches!(written, Some(Written::Done | Written::AlreadyDone)) {
            self.seq += 1;
            self.telemetry.observe(&self.state, &effects);
        }
        written
    }

    /// Keeps the reply reader on the stream the current attempt's replies go
    /// to when it is not this daemon's own, and off it once it is over.
    fn follow_reply_stream(&mut self) {
        let main = &self.state.reply_stream;
        let now = self
            .state
            .current
            .as_ref()
            .map(|x| x.reply_stream.clone())
            .filter(|s| s != main);
        if now != self.followed {
            if let Some(old) = self.followed.take() {
                self.shared.followed.remove(&old);
            }
            if let Some(new) = &now {
                self.shared.followed.add(new);
            }
            self.followed = now;
        }
    }
}

impl Drop for Driven<'_> {
    fn drop(&mut self) {
        if let Some(stream) = self.followed.take() {
            self.shared.followed.remove(&stream);
        }
    }
}

fn event_of(inbound: Inbound) -> Event {
    match inbound {
        Inbound::Reply(reply) => Event::Reply(*reply),
        Inbound::Operator(request) => Event::Operator(*request),
    }
}

/// Replies written in one transition at most, with the one that woke the
/// saga: bounds the size of one write.
const MERGED_REPLIES_MAX: usize = 32;

/// How often a held timeout looks again whether replies can be read.
const HOLD_TIMEOUT_FOR: u64 = 100;

/// How long a per-request reply stream outlives its command's deadline: late
/// replies land in it, unread, and go with it.
const OWN_STREAM_GRACE_SECS: u64 = 600;

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn log_event(event: &SagaEvent, request_id: Option<&str>) {
    tracing::debug!(
        event_type = event.event_type.as_str(),
        request_id = request_id.unwrap_or(""),
        status = event.status.as_str(),
        step = event.step.as_deref().unwrap_or(""),
        payload = %event.payload,
        "saga event"
    );
}

/// Writes a transition, retrying with capped backoff while Redis fails.
/// `None` only if the daemon stopped first; the saga then stays as last
/// written, and its start entry unacknowledged.
/// `slot`, when given, is a write slot the caller took already.
pub(super) async fn write_until_done(
    shared: &Shared,
    transition: &Transition<'_>,
    mut slot: Option<SemaphorePermit<'_>>,
) -> Option<Written> {
    let mut delay = Duration::from_millis(50);
    let mut conn = shared.conn.clone();
    loop {
        let written = {
            let _slot = match slot.take() {
                Some(slot) => slot,
                None => shared.write_slots.acquire().await.expect("never closed"),
            };
            transition.write(&mut conn, &shared.settings).await
        };
        match written {
            Ok(written) => {
                shared.writes.succeeded();
                return Some(written);
            }
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
