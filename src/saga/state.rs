//! A saga instance's state: everything needed to continue it, serializable
//! so that a store can persist it and another process can resume it.

use crate::protocol::{
    CommandKind, CorrelationId, Json, RequestId, SagaId, SagaStatus, SpanId, TraceId, UnixMillis,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl Phase {
    pub fn status(self) -> SagaStatus {
        match self {
            Phase::Running => SagaStatus::Running,
            Phase::Compensating => SagaStatus::Compensating,
            Phase::Completed => SagaStatus::Completed,
            Phase::Compensated => SagaStatus::Compensated,
            Phase::Failed => SagaStatus::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        self.status().is_terminal()
    }
}

/// What the current exchange waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "for")]
pub enum Waiting {
    /// A command was sent; its final reply is due by `deadline_ms`. With
    /// the step's other clocks: a first reply (any) by `ack_by_ms`, and
    /// the next reply by `heartbeat_by_ms` (moved on by each reply).
    Reply {
        deadline_ms: UnixMillis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack_by_ms: Option<UnixMillis>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heartbeat_by_ms: Option<UnixMillis>,
    },
    /// The last attempt failed; the next one is sent at `until_ms`.
    Backoff { until_ms: UnixMillis },
}

/// The one command exchange a saga has under way at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Index of the step (for a compensation: of the step being undone).
    pub step: usize,
    pub kind: CommandKind,
    /// The attempt sent last (or, while backing off, the one that failed).
    pub attempt: u32,
    pub request_id: RequestId,
    /// Our span for this attempt: the parent id of its `traceparent`.
    pub span_id: SpanId,
    pub sent_at_ms: UnixMillis,
    pub waiting: Waiting,
    /// Set once any attempt of this step timed out: its effect is unknown,
    /// so the step must be undone if the saga fails.
    pub timed_out: bool,
    /// Where the replies of this attempt go: the saga's reply stream when it
    /// was sent, or a stream of its own (`reply_stream: per_request`). Kept
    /// so that a daemon taking the saga over reads the right stream.
    pub reply_stream: String,
}

/// Why the saga is unwinding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub step: String,
    pub reason: String,
    /// The operator's key name when the saga unwinds because an operator
    /// cancelled it, rather than because a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// Why a saga was set aside as failed: one of its transitions could never
/// be written (a key of the wrong kind, a state too large). It keeps the
/// phase it was in, and the final replies that transition would have
/// recorded, to carry on from there when an operator retries it: a step
/// that completed is not run again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub phase: Phase,
    pub reason: String,
    #[serde(default)]
    pub replies: Vec<crate::protocol::Reply>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub saga_id: SagaId,
    /// The definition's name.
    pub saga: String,
    /// The version of the definition the saga started on, which it keeps
    /// to its end.
    #[serde(default)]
    pub definition_version: String,
    pub correlation_id: CorrelationId,
    pub trace_id: TraceId,
    /// The caller's span when the start carried one: the saga's parent.
    pub parent_span_id: Option<SpanId>,
    /// The saga's own span, parent of every attempt's span; kept so that a
    /// daemon resuming the saga ends the same span. Absent in records
    /// written before it was kept.
    #[serde(default)]
    pub span_id: Option<SpanId>,
    /// Where handlers send their replies for this saga.
    pub reply_stream: String,
    /// The saga's input (its start's payload).
    pub input: Json,
    /// Results of completed steps, by step name.
    pub results: BTreeMap<String, Json>,
    pub phase: Phase,
    pub current: Option<Exchange>,
    pub failure: Option<Failure>,
    /// Indexes of steps still to undo, next first.
    pub to_undo: Vec<usize>,
    /// Steps undone so far, in the order undone.
    pub undone: Vec<String>,
    /// Steps that had to be undone but define no compensation, or whose
    /// failed compensation an operator marked as done by hand.
    pub skipped: Vec<String>,
    /// While failed: the step whose compensation failed for good.
    #[serde(default)]
    pub stuck_at: Option<usize>,
    /// Set when an operator gave the failed saga up.
    #[serde(default)]
    pub abandoned: bool,
    /// Times an operator set the saga going again after it failed.
    #[serde(default)]
    pub rescues: u32,
    /// Set while the saga is failed because a transition of it could never
    /// be written.
    #[serde(default)]
    pub parked: Option<Parked>,
    pub started_at_ms: UnixMillis,
    pub ended_at_ms: Option<UnixMillis>,
}

/// Which clock of an attempt ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// No reply at all in time: nobody took the command.
    Ack,
    /// No reply for `heartbeat_timeout`: the handler is gone.
    Heartbeat,
    /// No final reply by the deadline.
    Completion,
}

impl Clock {
    pub fn as_str(self) -> &'static str {
        match self {
            Clock::Ack => "ack",
            Clock::Heartbeat => "heartbeat",
            Clock::Completion => "completion",
        }
    }
}

impl Waiting {
    /// When this wait is next due: the earliest of its clocks.
    pub fn due_ms(&self) -> UnixMillis {
        match *self {
            Waiting::Reply {
                deadline_ms,
                ack_by_ms,
                heartbeat_by_ms,
            } => [ack_by_ms, heartbeat_by_ms]
                .into_iter()
                .flatten()
                .fold(deadline_ms, UnixMillis::min),
            Waiting::Backoff { until_ms } => until_ms,
        }
    }

    /// The clock of a reply wait that has run out at `now`, the one that
    /// ran out first when several have.
    pub fn expired(&self, now: UnixMillis) -> Option<(Clock, UnixMillis)> {
        let Waiting::Reply {
            deadline_ms,
            ack_by_ms,
            heartbeat_by_ms,
        } = *self
        else {
            return None;
        };
        [
            (Clock::Ack, ack_by_ms),
            (Clock::Heartbeat, heartbeat_by_ms),
            (Clock::Completion, Some(deadline_ms)),
        ]
        .into_iter()
        .filter_map(|(clock, at)| at.map(|at| (clock, at)))
        .filter(|(_, at)| *at <= now)
        .min_by_key(|(_, at)| *at)
    }
}

impl SagaState {
    /// When the machine next needs a [`super::Event::Tick`], if ever.
    pub fn wake_at(&self) -> Option<UnixMillis> {
        self.current.as_ref().map(|x| x.waiting.due_ms())
    }
}
