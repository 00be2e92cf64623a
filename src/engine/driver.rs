//! One task per saga: feeds the state machine with replies and timer ticks
//! and performs its effects, each transition in one fenced, atomic write.
//! A saga task starts from a start entry ([`start`]), from the record of a
//! saga taken over from another daemon ([`resume`]), or from an operator's
//! request about a saga no daemon drives ([`adopt`]).
//!
//! A transition that Redis refuses for good (a key of the wrong kind, a
//! state too large) is never retried: a start is moved to the dead-letter
//! stream and rejected; a saga under way is parked as failed from its last
//! written state (see [`crate::saga::park`]), with a note on the
//! dead-letter stream. Transient failures are retried with capped backoff.

use super::definitions;
use super::idempotency::{claim_idempotency_key, duplicate, release_idempotency_key};
use super::lease::Epoch;
use super::replies::Receipt;
use super::router::{Inbound, Inbox, Registration};
use super::Shared;
use crate::definition::SagaDefinition;
use crate::protocol::{
    CorrelationId, EventType, SagaEvent, SagaId, SagaStatus, StartRequest, TraceId,
};
use crate::retry::{retry, Outage, Policy, Tried};
use crate::saga::{self, Effect, Event, OperatorRequest, Phase, RandomIds, SagaInit, SagaState};
use crate::store::idempotency::Claim;
use crate::store::keys::Keys;
use crate::store::lease::{self as leases, SagaClaim};
use crate::store::sagas::{self, LoadError, Record};
use crate::store::transition::check_streams;
use crate::store::{maintain, EntryRef, Fence, Ownership, Transition, WriteError, Written};
use crate::telemetry::metrics::{self, InFlight};
use crate::telemetry::saga::SagaTelemetry;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, SemaphorePermit};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

/// Starts a saga from a valid start entry and drives it to its end. The
/// permit is held for the saga's life; `creating` until its first write.
pub(super) async fn start(
    shared: Arc<Shared>,
    def: Arc<SagaDefinition>,
    request: StartRequest,
    at: EntryRef,
    permit: OwnedSemaphorePermit,
    creating: TaskTrackerToken,
) {
    let (stream, entry_id) = at.start();
    let saga_id = SagaId::for_start(stream, entry_id);
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
            // Boxed, like every rare step here: a saga task's future is as
            // large as its largest step, and thousands of them wait at once.
            match Box::pin(claim_idempotency_key(&shared, &def.name, key, &saga_id)).await {
                Ok(Claim::Ours) => {}
                // This very start, taken again after a crash.
                Ok(Claim::Taken(existing)) if existing == saga_id.as_str() => {}
                Ok(Claim::Taken(existing)) => {
                    return Box::pin(duplicate(&shared, &def, &request, key, existing, &at)).await
                }
                Err(Some(e)) => {
                    let refused = refuse_start(&shared, &def.name, &request.correlation_id, &at, &e);
                    return Box::pin(refused).await;
                }
                Err(None) => return,
            }
        }
        let epoch = shared.epoch();
        let init = SagaInit {
            saga_id: saga_id.clone(),
            correlation_id: request.correlation_id.clone(),
            trace_id,
            parent_span_id: request.traceparent.as_ref().map(|tp| tp.span_id.clone()),
            reply_stream: epoch.reply_stream.clone(),
            input: request.input,
        };
        let (state, transition) = saga::start(&def, init, shared.now_ms(), &mut RandomIds);
        let Some((inbox, registration)) = shared.router.register(saga_id.clone()) else {
            return; // this daemon drives it already
        };
        let mut saga = Driven::new(&shared, &def, state, 0, epoch, permit);
        saga.persisted = None;
        saga.telemetry = SagaTelemetry::default();
        let outcome = Box::pin(saga.perform(transition, Some(&at), None, Vec::new())).await;
        drop(creating);
        let mut ended = Ended::Done;
        match outcome {
            Outcome::Written(Written::Done | Written::AlreadyDone) => {
                tracing::info!(entry_id = %at.id, "saga started");
                ended = saga.drive(inbox).await;
            }
            // Started already by another daemon that took this entry too.
            Outcome::Written(Written::NotOurs) => {
                tracing::info!(entry_id = %at.id, "saga started elsewhere")
            }
            // Left pending: taken again, under a live lease, by this daemon
            // or another.
            Outcome::Written(Written::LeaseLost) => {
                tracing::warn!(entry_id = %at.id, "the lease ran out before the saga was created; the start is taken again");
                shared.renew_now.notify_one();
            }
            Outcome::Refused(e) => {
                let refused =
                    refuse_start(&shared, &def.name, &saga.state.correlation_id, &at, &e);
                Box::pin(refused).await;
                // The start may be sent again once the cause is mended: its
                // idempotency key must not name a saga that never was.
                if let Some(key) = &request.idempotency_key {
                    let released = release_idempotency_key(&shared, &def.name, key, &saga_id);
                    Box::pin(released).await;
                }
            }
            Outcome::Stopped => {}
        }
        shared.router.remove(&saga_id, registration);
        after_drive(&shared, ended, &saga_id);
    }
    .instrument(span)
    .await
}

/// A start whose first write can never be made: moved to the dead-letter
/// stream (a bounded copy, acknowledged), and rejected on the audit stream
/// if that can be written.
async fn refuse_start(
    shared: &Shared,
    saga: &str,
    correlation_id: &CorrelationId,
    at: &EntryRef,
    error: &WriteError,
) {
    let reason = format!("the saga cannot be written: {error}");
    if !dead_letter_entry(shared, at, &reason).await {
        return;
    }
    let event = SagaEvent {
        correlation_id: correlation_id.clone(),
        saga_id: None,
        saga: saga.to_owned(),
        event_type: EventType::SagaRejected,
        status: SagaStatus::Rejected,
        step: None,
        branch: None,
        payload: json!({ "entry_id": at.start().1, "stream": at.start().0, "reason": reason }),
        timestamp: shared.now_ms(),
    };
    let transition = Transition {
        events: vec![&event],
        ..Default::default()
    };
    if let Err(WriteOutcome::Refused(e)) = write_until_done(shared, &transition, None).await {
        tracing::error!(error = %e, "the rejection cannot be recorded on the audit stream");
    }
}

/// Moves a start entry that can never be processed to the dead-letter
/// stream, as a bounded copy with `reason`, and acknowledges it; retried
/// while Redis fails. False if it could not be done (the daemon stopped, or
/// Redis refuses even that): the entry is then left pending.
pub(super) async fn dead_letter_entry(shared: &Shared, at: &EntryRef, reason: &str) -> bool {
    tracing::error!(entry_id = %at.id, stream = %at.stream, %reason, "start moved to the dead-letter stream");
    let group = Some(shared.settings.trigger_group.as_str());
    let move_it = || {
        let mut conn = shared.conn.clone();
        async move {
            let settings = &shared.settings;
            maintain::dead_letter(&mut conn, settings, &at.stream, group, &at.id, reason).await
        }
    };
    match retry(&shared.shutdown, Policy::WRITES, &shared.writes, move_it).await {
        Tried::Done(_) => {
            metrics::dead_lettered("start");
            true
        }
        Tried::Refused(e) => {
            tracing::error!(error = %e, entry_id = %at.id, "the start cannot be dead-lettered either; left pending");
            false
        }
        Tried::Stopped => false,
    }
}

/// Resumes a saga taken over from another daemon, from its record.
pub(super) async fn resume(shared: Arc<Shared>, saga_id: String, epoch: Arc<Epoch>) {
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let record = match Box::pin(load(&shared, &saga_id)).await {
        Ok(Some(record)) => record,
        Ok(None) => return tracing::warn!(%saga_id, "a saga taken over has no record; skipped"),
        Err(e) => return tracing::error!(%saga_id, error = %e, "cannot read a saga taken over"),
    };
    let Record { mut state, seq, .. } = record;
    let Some(def) = definition_of(&shared, &state).await else {
        return;
    };
    let span = saga_span(&def.name, &saga_id, &state.correlation_id, &state.trace_id);
    async move {
        // Its next commands name this daemon's reply stream; the attempt
        // under way keeps its own until it ends.
        state.reply_stream = epoch.reply_stream.clone();
        let Some((inbox, registration)) = register_when_let_go(&shared, &state.saga_id).await
        else {
            return;
        };
        tracing::info!(phase = ?state.phase.status(), "saga resumed");
        let id = state.saga_id.clone();
        let mut saga = Driven::new(&shared, &def, state, seq, epoch, permit);
        saga.follow_reply_stream();
        let ended = saga.drive(inbox).await;
        shared.router.remove(&id, registration);
        after_drive(&shared, ended, &id);
    }
    .instrument(span)
    .await
}

/// The longest a saga taken over waits for a task of this daemon that
/// still drives it to let go (see [`register_when_let_go`]).
const LET_GO_WAIT: Duration = Duration::from_secs(30);

/// Registers a saga taken over with the router, once no task of this
/// daemon drives it any more. A saga this daemon drove under an epoch whose
/// lease ran out (a failover of the leases' master outlasting the lease) is
/// claimed again by its takeover worker, possibly while the task of the
/// earlier epoch is still inside a write that Redis does not answer yet:
/// that task lets go once the write returns, fenced. Giving up at once
/// here would leave the saga owned by a live daemon that drives it nowhere,
/// and so never taken over again. Waits at most [`LET_GO_WAIT`].
async fn register_when_let_go(shared: &Shared, saga_id: &SagaId) -> Option<(Inbox, Registration)> {
    let deadline = tokio::time::Instant::now() + LET_GO_WAIT;
    loop {
        if let Some(registered) = shared.router.register(saga_id.clone()) {
            return Some(registered);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(%saga_id, "a saga taken over is still driven by an earlier task; left to it");
            return None;
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// Takes up a saga whose record names an owner without a live lease (the
/// record was edited, or left by an older version): it is claimed for this
/// daemon and resumed.
async fn adopt_orphan(shared: Arc<Shared>, saga_id: String) {
    let epoch = shared.epoch();
    let mut conn = shared.conn.clone();
    let claimed = leases::claim_saga(
        &mut conn,
        &shared.settings,
        &saga_id,
        &epoch.owner,
        leases::From::AnyDead,
        true,
    )
    .await;
    if matches!(claimed, Ok(SagaClaim::Claimed)) {
        tracing::warn!(%saga_id, "a saga whose owner has no live lease was taken over");
        resume(shared, saga_id, epoch).await;
    }
}

/// Takes up a saga stuck on a failed compensation (or parked), which no
/// daemon drives, to answer an operator's request about it. Whether the
/// request is accepted is worked out first, on the record as read; the saga
/// is then claimed (its owner changed from the one read, atomically), so
/// that of the daemons that all read the request, one answers. A refused
/// request changes nothing but the audit: the record keeps its expiry and
/// joins no daemon's sagas.
pub(super) async fn adopt(
    shared: Arc<Shared>,
    saga_id: String,
    mut request: OperatorRequest,
    nonce: Option<String>,
    _slot: OwnedSemaphorePermit,
) {
    let Record {
        state, seq, owner, ..
    } = match Box::pin(load(&shared, &saga_id)).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return tracing::warn!(%saga_id, "an operator's request names no saga here; ignored")
        }
        Err(e) => {
            return tracing::error!(%saga_id, error = %e, "cannot read a saga for an operator's request")
        }
    };
    if !matches!(state.phase, Phase::Failed(_)) {
        // Ended otherwise, or driven by a daemon, which takes the request.
        return;
    }
    let Some(def) = definition_of(&shared, &state).await else {
        return;
    };
    let epoch = shared.epoch();
    let mut conn = shared.conn.clone();
    let from = match owner.as_deref() {
        Some(owner) => leases::From::Owner(owner),
        None => leases::From::AnyDead,
    };
    match Box::pin(leases::claim_saga(
        &mut conn,
        &shared.settings,
        &saga_id,
        &epoch.owner,
        from,
        false,
    ))
    .await
    {
        Ok(SagaClaim::Claimed) => {}
        Ok(SagaClaim::NotClaimed) => return, // another daemon took it
        Ok(SagaClaim::ClaimerLost) => return shared.renew_now.notify_one(),
        Err(e) => {
            return tracing::error!(%saga_id, error = %e, "cannot claim a saga for an operator's request")
        }
    }
    // This daemon acts on the request: it checks that it is no replay.
    if let (None, Some(nonce)) = (&request.unproven, &nonce) {
        if !Box::pin(super::control::first_use(&shared, nonce)).await {
            request.unproven = Some(super::control::REPLAYED.into());
        }
    }
    // A saga that goes on needs a permit like any other.
    let Ok(permit) = shared.permits.clone().acquire_owned().await else {
        return;
    };
    let span = saga_span(&def.name, &saga_id, &state.correlation_id, &state.trace_id);
    async move {
        let mut state = state;
        state.reply_stream = epoch.reply_stream.clone();
        let Some((inbox, registration)) = shared.router.register(state.saga_id.clone()) else {
            return;
        };
        tracing::info!(action = request.action.name(), by = %request.by, "operator's request");
        let id = state.saga_id.clone();
        let mut saga = Driven::new(&shared, &def, state, seq, epoch, permit);
        let applied = saga::apply(
            &mut saga.state,
            saga.def,
            Event::Operator(request),
            shared.now_ms(),
            &mut RandomIds,
        );
        // An operator's request is never ignored: refused, it is recorded.
        let Ok(transition) = applied else { return };
        let written = Box::pin(saga.perform(transition, None, None, Vec::new())).await;
        let mut ended = Ended::Done;
        if matches!(
            written,
            Outcome::Written(Written::Done | Written::AlreadyDone)
        ) {
            ended = saga.drive(inbox).await;
        }
        shared.router.remove(&id, registration);
        after_drive(&shared, ended, &id);
    }
    .instrument(span)
    .await
}

/// The version of its definition a saga started on; `None`, logged, when
/// it cannot be had (the saga is then left as it is).
async fn definition_of(shared: &Shared, state: &SagaState) -> Option<Arc<SagaDefinition>> {
    let version = &state.definition_version;
    match Box::pin(definitions::resolve(shared, &state.saga, version)).await {
        Ok(def) => Some(def),
        Err(why) => {
            tracing::error!(saga_id = %state.saga_id, saga = %state.saga, %why, "the saga's definition cannot be had; the saga is left as it is");
            None
        }
    }
}

/// The span every log line about a saga is written in.
fn saga_span(
    saga: &str,
    saga_id: &str,
    correlation_id: &CorrelationId,
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

/// A saga's record; `None` when there is none, or when its state cannot
/// be read (logged; the record is left as it is).
async fn load(shared: &Shared, saga_id: &str) -> redis::RedisResult<Option<Record>> {
    let mut conn = shared.conn.clone();
    let keys = Keys::of(&shared.settings);
    match sagas::load_state(&mut conn, &keys, saga_id).await {
        Ok(record) => Ok(record),
        Err(LoadError::Redis(e)) => Err(e),
        Err(e @ LoadError::Unreadable { .. }) => {
            tracing::error!(%saga_id, error = %e, "a saga record cannot be read; left as it is");
            Ok(None)
        }
    }
}

/// Why a saga task stopped driving its saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The saga ended (or was parked).
    Done,
    /// The daemon stopped, or its lease period ended.
    Stopped,
    /// Its record names another owner now.
    LetGo,
}

/// After a saga task let its saga go because the record names another
/// owner: if that owner has no live lease, nobody else will drive the saga,
/// so it is taken back.
fn after_drive(shared: &Arc<Shared>, ended: Ended, saga_id: &SagaId) {
    if ended == Ended::LetGo {
        shared
            .tracker
            .spawn(adopt_orphan(shared.clone(), saga_id.to_string()));
    }
}

/// What became of a transition.
enum Outcome {
    Written(Written),
    /// Redis refused it for good: it was not written, and never will be.
    Refused(WriteError),
    /// The daemon stopped before it could be written.
    Stopped,
}

/// A saga being driven by this daemon.
struct Driven<'a> {
    shared: &'a Shared,
    def: &'a SagaDefinition,
    state: SagaState,
    /// Number of the last transition written.
    seq: u64,
    /// The status of the state last written (`None` before the creation).
    persisted: Option<SagaStatus>,
    epoch: Arc<Epoch>,
    timer: Option<u64>,
    /// The reply streams other than this daemon's that attempts under way
    /// reply on (`reply_stream: per_request`), followed by the reply reader
    /// while they are awaited.
    followed: BTreeSet<String>,
    /// Its spans and metrics, from the transitions written.
    telemetry: SagaTelemetry,
    /// The final replies the transition under way applies.
    finals: Vec<crate::protocol::Reply>,
    /// What the saga waited for from outside when last asked (see
    /// [`super::asks`]), when it is next asked, and the pause before.
    asked: Vec<saga::Ask>,
    ask_at: Option<tokio::time::Instant>,
    ask_pause: Duration,
    /// Answers to asks, applied one by one before anything else.
    answers: std::collections::VecDeque<Event>,
    /// Tells when a saga of this daemon let go of locks.
    let_go: tokio::sync::watch::Receiver<u64>,
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
            persisted: Some(state.phase.status()),
            state,
            seq,
            epoch,
            timer,
            followed: BTreeSet::new(),
            telemetry,
            finals: Vec::new(),
            asked: Vec::new(),
            ask_at: None,
            ask_pause: Duration::ZERO,
            answers: Default::default(),
            let_go: shared.locks_let_go.subscribe(),
            _in_flight: InFlight::enter(),
            _permit: permit,
        }
    }

    async fn drive(&mut self, mut inbox: Inbox) -> Ended {
        while !self.state.phase.is_terminal() {
            self.schedule_asks();
            let now = self.shared.now_ms();
            let sleep = self
                .timer
                .map(|at| Duration::from_millis(at.saturating_sub(now)));
            let ask_at = self.ask_at;
            let (event, receipt) = match self.answers.pop_front() {
                Some(answer) => (answer, None),
                None => tokio::select! {
                    // Replies before ticks: a reply that came in time wins
                    // over a deadline seen at the same moment.
                    biased;
                    _ = self.epoch.cancel.cancelled() => return Ended::Stopped,
                    inbound = inbox.recv() => match inbound {
                        Some(inbound) => event_of(inbound),
                        None => return Ended::Stopped,
                    },
                    _ = sleep_until_or_never(ask_at) => {
                        self.ask().await;
                        continue;
                    }
                    Ok(()) = self.let_go.changed(), if self.waits_for_a_lock() => {
                        // A lock may be free: asked at once, and soon again
                        // (on a cluster the release is relayed just after).
                        self.ask_pause = Duration::ZERO;
                        self.ask().await;
                        continue;
                    }
                    _ = sleep_or_never(sleep) => {
                        if !self.asked.is_empty() {
                            // A lock let go of or a signal kept before the
                            // deadline wins over it: asked first.
                            self.ask().await;
                            if !self.answers.is_empty() {
                                self.answers.push_back(Event::Tick);
                                continue;
                            }
                        }
                        (Event::Tick, None)
                    }
                },
            };
            if event == Event::Tick && self.reply_may_be_unread() {
                // The reply may be in Redis, unread: hold the timeout until
                // the reader has read its stream through the deadline.
                self.timer = Some(self.shared.now_ms() + HOLD_TIMEOUT_FOR);
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
            let mut receipts: Vec<Receipt> = receipt.into_iter().collect();
            self.finals.clear();
            self.keep_if_final(&event);
            let applied = saga::apply(
                &mut self.state,
                self.def,
                event,
                self.shared.now_ms(),
                &mut RandomIds,
            );
            let mut transition = match applied {
                Ok(transition) => transition,
                Err(_) => saga::Transition {
                    effects: Vec::new(),
                    changed: false,
                },
            };
            self.take_answers(&mut transition);
            self.take_waiting_replies(&mut inbox, &mut transition, &mut receipts);
            if transition.effects.is_empty() && !transition.changed {
                // A reply no attempt awaits, or a tick that found nothing
                // due (the clocks of the timer and of the state differ by a
                // little): wait for what is due next.
                self.timer = self.state.wake_at();
                continue;
            }
            let effects = transition;
            // Boxed: the write's state lives on the heap only while it is
            // under way, so that an idle saga's task stays small.
            match Box::pin(self.perform(effects, None, Some(slot), receipts)).await {
                Outcome::Written(Written::Done | Written::AlreadyDone) => {}
                Outcome::Written(Written::NotOurs) => {
                    tracing::warn!("saga taken over by another daemon; this one lets go");
                    return Ended::LetGo;
                }
                Outcome::Written(Written::LeaseLost) => {
                    self.shared.renew_now.notify_one();
                    return Ended::Stopped;
                }
                Outcome::Refused(e) => {
                    Box::pin(self.park(e)).await;
                    return Ended::Done;
                }
                Outcome::Stopped => return Ended::Stopped,
            }
        }
        tracing::info!(status = self.state.phase.status().as_str(), "saga ended");
        Ended::Done
    }

    /// Asks at once about what the saga newly waits for; keeps asking, less
    /// and less often, about what it still waits for.
    fn schedule_asks(&mut self) {
        let asks = self.state.asks();
        if asks == self.asked {
            return;
        }
        self.ask_at = (!asks.is_empty()).then(tokio::time::Instant::now);
        self.ask_pause = Duration::ZERO;
        self.asked = asks;
    }

    fn waits_for_a_lock(&self) -> bool {
        (self.asked.iter()).any(|a| matches!(a, saga::Ask::Lock { .. }))
    }

    /// Asks about what the saga waits for; queues the answers.
    async fn ask(&mut self) {
        let answers = super::asks::ask(self.shared, self.def, &self.state).await;
        self.answers.extend(answers);
        self.ask_pause = super::asks::next_pause(self.ask_pause);
        self.ask_at = Some(tokio::time::Instant::now() + self.ask_pause);
    }

    /// Keeps a copy of a final reply about to be applied: if its transition
    /// can never be written, the parked saga keeps it, to apply it again
    /// when retried (the step it completed is not run again).
    fn keep_if_final(&mut self, event: &Event) {
        if let Event::Reply(reply) = event {
            if reply.status.is_final() {
                self.finals.push(reply.clone());
            }
        }
    }

    /// True when a timeout is due but the reply stream of the attempt has
    /// not been read through its deadline yet: after a restart, or while
    /// Redis cannot be read, the reply may be waiting there.
    fn reply_may_be_unread(&self) -> bool {
        let now = self.shared.now_ms();
        self.state.work.exchanges().any(|(_, x)| {
            if !matches!(x.waiting, saga::Waiting::Reply { .. }) {
                return false;
            }
            // The earliest of the attempt's clocks: a reply read late may
            // stop the ack or heartbeat clock as well as the completion one.
            let due_ms = x.waiting.due_ms();
            now >= due_ms && self.shared.replies.read_through(&x.reply_stream) < due_ms
        })
    }

    /// Applies the answers to asks still queued (a step's locks taken one
    /// after the other) with the event under way: one write for all.
    fn take_answers(&mut self, transition: &mut saga::Transition) {
        while let Some(answer) = self.answers.pop_front() {
            if self.state.phase.is_terminal() {
                self.answers.clear();
                return;
            }
            let now = self.shared.now_ms();
            let more = saga::apply(&mut self.state, self.def, answer, now, &mut RandomIds);
            if let Ok(more) = more {
                transition.effects.extend(more.effects);
                transition.changed |= more.changed;
            }
        }
    }

    /// Applies the replies already waiting in the inbox, so that their
    /// transitions are written together with the one under way: a handler's
    /// `start`, `progress` and `completed`, read in one batch, cost one
    /// write instead of three. The effects are kept in order; the state
    /// written is the last one, under one transition number.
    fn take_waiting_replies(
        &mut self,
        inbox: &mut Inbox,
        transition: &mut saga::Transition,
        receipts: &mut Vec<Receipt>,
    ) {
        for _ in 0..MERGED_REPLIES_MAX {
            if self.state.phase.is_terminal() {
                return;
            }
            let Ok(inbound) = inbox.try_recv() else {
                return;
            };
            let (event, receipt) = event_of(inbound);
            receipts.extend(receipt);
            self.keep_if_final(&event);
            let more = saga::apply(
                &mut self.state,
                self.def,
                event,
                self.shared.now_ms(),
                &mut RandomIds,
            );
            if let Ok(more) = more {
                transition.effects.extend(more.effects);
                transition.changed |= more.changed;
            }
        }
    }

    /// Writes one transition's effects in one go. `receipts` are the
    /// replies the transition applies: released once it is written.
    async fn perform(
        &mut self,
        transition: saga::Transition,
        ack: Option<&EntryRef>,
        slot: Option<SemaphorePermit<'_>>,
        receipts: Vec<Receipt>,
    ) -> Outcome {
        let saga::Transition {
            effects,
            changed: persist,
        } = transition;
        // The reader follows a new attempt's own reply stream before its
        // command exists, so no reply can come before the reader looks.
        self.follow_reply_stream();
        let mut commands = Vec::new();
        let mut events = Vec::new();
        let mut own_streams = Vec::new();
        let mut unlocks = Vec::new();
        // The attempt each event is about: the one under way of its step
        // (or branch), until the transition sends the next.
        let mut sent: BTreeMap<(&str, Option<u32>), String> = BTreeMap::new();
        let now = self.shared.now_ms();
        for effect in &effects {
            match effect {
                Effect::Send { stream, command } => {
                    if command.reply_stream != self.state.reply_stream {
                        let ttl =
                            command.deadline_ms.saturating_sub(now) / 1000 + OWN_STREAM_GRACE_SECS;
                        own_streams.push((command.reply_stream.as_str(), ttl));
                    }
                    let key = (command.step.as_str(), command.branch);
                    sent.insert(key, command.request_id.to_string());
                    commands.push((stream.as_str(), command));
                }
                Effect::Emit(event) => {
                    let step = event.step.as_deref().unwrap_or("");
                    let request_id = (sent.get(&(step, event.branch)).map(String::as_str))
                        .or_else(|| self.telemetry.request_id(step, event.branch));
                    log_event(event, request_id);
                    events.push(event);
                }
                Effect::Unlock { locks } => unlocks.extend(locks.iter().map(String::as_str)),
                Effect::ArmTimer { at_ms } => self.timer = Some(*at_ms),
                Effect::Finish => {}
            }
        }
        let phase = self.state.phase.status();
        let ownership = match (self.persisted, persist) {
            (_, false) => Ownership::Stay,
            (_, true) if phase.is_terminal() => Ownership::Leave,
            (None, true) => Ownership::Join,
            (Some(before), true) if before.is_terminal() => Ownership::Join,
            _ => Ownership::Stay,
        };
        let transition = Transition {
            saga: Some((
                self.state.saga_id.as_str(),
                Fence {
                    owner: &self.epoch.owner,
                    seq: self.seq + 1,
                    ownership,
                },
            )),
            state: persist.then_some(&self.state),
            commands,
            events,
            ack,
            own_reply_streams: own_streams,
            wake: Some(&self.epoch.reply_stream),
            unlocks,
        };
        let written = write_until_done(self.shared, &transition, slot).await;
        drop(transition);
        match written {
            Ok(written) => {
                if matches!(written, Written::Done | Written::AlreadyDone) {
                    if effects.iter().any(|e| matches!(e, Effect::Unlock { .. })) {
                        self.shared.locks_let_go.send_modify(|n| *n += 1);
                    }
                    self.seq += 1;
                    if persist {
                        self.persisted = Some(phase);
                    }
                    self.telemetry.observe(&self.state, &effects);
                }
                // Applied: the replies may go from the stream now.
                drop(receipts);
                Outcome::Written(written)
            }
            Err(WriteOutcome::Refused(e)) => Outcome::Refused(e),
            Err(WriteOutcome::Stopped) => Outcome::Stopped,
        }
    }

    /// Sets the saga aside as failed, from its last written state: its next
    /// transition can never be written. Noted on the dead-letter stream.
    async fn park(&mut self, error: WriteError) {
        let reason = format!("a transition cannot be written: {error}");
        tracing::error!(%reason, "saga parked as failed");
        let Some((mut state, seq)) = self.reload().await else {
            return;
        };
        let parked = saga::park(
            &mut state,
            self.def,
            reason.clone(),
            std::mem::take(&mut self.finals),
            self.shared.now_ms(),
            &mut RandomIds,
        );
        let effects = parked.map(|t| t.effects).unwrap_or_default();
        let events: Vec<&SagaEvent> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(event) => Some(event),
                _ => None,
            })
            .collect();
        let mut transition = Transition {
            saga: Some((
                state.saga_id.as_str(),
                Fence {
                    owner: &self.epoch.owner,
                    seq: seq + 1,
                    ownership: Ownership::Leave,
                },
            )),
            state: Some(&state),
            events,
            ..Default::default()
        };
        if let Err(WriteOutcome::Refused(e)) =
            write_until_done(self.shared, &transition, None).await
        {
            // Even the audit event cannot be written: the record alone.
            tracing::error!(error = %e, "the parked saga's event cannot be written either");
            transition.events.clear();
            if let Err(WriteOutcome::Refused(e)) =
                write_until_done(self.shared, &transition, None).await
            {
                tracing::error!(error = %e, "the parked saga cannot be recorded; left as last written");
            }
        }
        drop(transition);
        metrics::dead_lettered("saga");
        let mut conn = self.shared.conn.clone();
        let settings = &self.shared.settings;
        let noted = maintain::note_parked(
            &mut conn,
            settings,
            state.saga_id.as_str(),
            &state.saga,
            &reason,
        )
        .await;
        if let Err(e) = noted {
            tracing::error!(error = %e, "the parked saga cannot be noted on the dead-letter stream");
        }
        self.state = state;
    }

    /// The saga's last written state, read back (retrying while Redis
    /// fails); `None` if it cannot be read or the daemon stops.
    async fn reload(&self) -> Option<(SagaState, u64)> {
        let saga_id = self.state.saga_id.as_str();
        let outage = Outage::new("reading a parked saga's record");
        let read = || load(self.shared, saga_id);
        match retry(&self.shared.shutdown, Policy::WRITES, &outage, read).await {
            Tried::Done(record) => record.map(|r| (r.state, r.seq)),
            Tried::Refused(e) => {
                tracing::error!(error = %e, "the saga's record cannot be read");
                None
            }
            Tried::Stopped => None,
        }
    }

    /// Keeps the reply reader on the streams that attempts under way
    /// reply on when they are not this daemon's own, and off each once its
    /// attempt is over.
    fn follow_reply_stream(&mut self) {
        let main = &self.state.reply_stream;
        let now: BTreeSet<String> = (self.state.work.exchanges())
            .map(|(_, x)| &x.reply_stream)
            .filter(|s| *s != main)
            .cloned()
            .collect();
        for old in self.followed.difference(&now) {
            self.shared.replies.unfollow(old);
        }
        for new in now.difference(&self.followed) {
            self.shared.replies.follow(new);
        }
        self.followed = now;
    }
}

impl Drop for Driven<'_> {
    fn drop(&mut self) {
        for stream in std::mem::take(&mut self.followed) {
            self.shared.replies.unfollow(&stream);
        }
    }
}

fn event_of(inbound: Inbound) -> (Event, Option<Receipt>) {
    match inbound {
        Inbound::Reply(reply, receipt) => (Event::Reply(*reply), Some(receipt)),
        Inbound::Operator(request) => (Event::Operator(*request), None),
    }
}

/// Replies written in one transition at most, with the one that woke the
/// saga: bounds the size of one write.
const MERGED_REPLIES_MAX: usize = 32;

/// How often a held timeout looks again whether its replies were read.
const HOLD_TIMEOUT_FOR: u64 = 100;

/// How long a per-request reply stream outlives its command's deadline: late
/// replies land in it, unread, and go with it.
const OWN_STREAM_GRACE_SECS: u64 = 600;

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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
        branch = event.branch,
        payload = %event.payload,
        "saga event"
    );
}

/// Why a write was not made.
pub(super) enum WriteOutcome {
    /// Redis refused it for good.
    Refused(WriteError),
    /// The daemon stopped first; the saga stays as last written, and its
    /// start entry unacknowledged.
    Stopped,
}

/// Writes a transition, retrying with capped backoff while Redis fails for
/// a reason that may pass; a refusal that cannot pass is returned at once.
/// `slot`, when given, is a write slot the caller took already.
pub(super) async fn write_until_done(
    shared: &Shared,
    transition: &Transition<'_>,
    mut slot: Option<SemaphorePermit<'_>>,
) -> Result<Written, WriteOutcome> {
    // Only Redis's failures are the policy's to sort; a transition refused
    // otherwise (too large, not encodable, a key of the wrong kind found by
    // the script) is given up on at once.
    let write = || {
        let (slot, mut conn) = (slot.take(), shared.conn.clone());
        async move {
            let _slot = match slot {
                Some(slot) => slot,
                None => shared.write_slots.acquire().await.expect("never closed"),
            };
            if let Some(relays) = &shared.relays {
                // On a cluster, what the script cannot check itself.
                let unchecked = relays.unchecked(transition.shared_streams(&shared.settings));
                match check_streams(&mut conn, &unchecked).await {
                    Ok(found) => relays.found_streams(found),
                    Err(WriteError::Redis(e)) => return Err(e),
                    Err(refused) => return Ok(Err(refused)),
                }
            }
            match transition.write(&mut conn, &shared.settings).await {
                Err(WriteError::Redis(e)) => Err(e),
                other => Ok(other),
            }
        }
    };
    match retry(&shared.shutdown, Policy::WRITES, &shared.writes, write).await {
        Tried::Done(Ok(written)) => {
            if let Some(relays) = &shared.relays {
                relays.poke(transition.partition());
            }
            Ok(written)
        }
        Tried::Done(Err(e)) => {
            shared.writes.refused();
            Err(WriteOutcome::Refused(e))
        }
        Tried::Refused(e) => Err(WriteOutcome::Refused(e.into())),
        Tried::Stopped => Err(WriteOutcome::Stopped),
    }
}
