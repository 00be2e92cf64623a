//! A saga instance's state: everything needed to continue it, serializable
//! so that a store can persist it and another process can resume it.

use crate::protocol::{
    CommandKind, CorrelationId, Json, RequestId, SagaId, SagaStatus, SpanId, TraceId, UnixMillis,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A step, or one branch of a fan-out step: what one command (an action,
/// later perhaps its compensation) is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Unit {
    /// The step's index in its definition.
    pub step: usize,
    /// The branch's position in the fan-out's list; `None` for a step
    /// without `for_each`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<u32>,
}

impl Unit {
    pub fn step(step: usize) -> Self {
        Self { step, branch: None }
    }

    /// Its key among its step's units: the branch, 0 for a plain step.
    pub fn slot(self) -> usize {
        self.branch.map_or(0, |b| b as usize)
    }
}

/// Where the saga is, with what only that phase has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "name")]
pub enum Phase {
    /// Steps run; none has failed for good.
    Running,
    /// A step failed for good (or an operator cancelled the saga): actions
    /// still under way end, then what was done is undone.
    Compensating(Failure),
    Completed {
        ended_at_ms: UnixMillis,
    },
    /// Everything that had to be undone was undone or skipped.
    Compensated {
        failure: Failure,
        ended_at_ms: UnixMillis,
    },
    /// Needs an operator: a compensation failed for good, or a transition
    /// could never be written.
    Failed(Failed),
}

/// A failed saga: why, and whether an operator gave it up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub ended_at_ms: UnixMillis,
    pub halt: Halt,
    /// Who gave the saga up, when an operator did: it stays failed and
    /// needs no one any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned_by: Option<String>,
}

/// What stopped a failed saga.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Halt {
    /// Compensations failed for good: the units in [`UnitState::Stuck`].
    Compensation { failure: Failure },
    /// One of its transitions could never be written (a key of the wrong
    /// kind, a state too large). It keeps the phase it was in, and the
    /// final replies that transition would have recorded, to carry on from
    /// there when an operator retries it: a step that completed is not run
    /// again.
    Parked(Parked),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// The phase to go back to: running or compensating.
    pub resume: Box<Phase>,
    pub reason: String,
    #[serde(default)]
    pub replies: Vec<crate::protocol::Reply>,
}

impl Phase {
    pub fn status(&self) -> SagaStatus {
        match self {
            Phase::Running => SagaStatus::Running,
            Phase::Compensating(_) => SagaStatus::Compensating,
            Phase::Completed { .. } => SagaStatus::Completed,
            Phase::Compensated { .. } => SagaStatus::Compensated,
            Phase::Failed(_) => SagaStatus::Failed,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status().is_terminal()
    }

    /// Why the saga unwinds or unwound, if it does.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Phase::Compensating(failure) | Phase::Compensated { failure, .. } => Some(failure),
            Phase::Failed(failed) => match &failed.halt {
                Halt::Compensation { failure } => Some(failure),
                Halt::Parked(parked) => parked.resume.failure(),
            },
            Phase::Running | Phase::Completed { .. } => None,
        }
    }

    pub fn ended_at_ms(&self) -> Option<UnixMillis> {
        match self {
            Phase::Completed { ended_at_ms } | Phase::Compensated { ended_at_ms, .. } => {
                Some(*ended_at_ms)
            }
            Phase::Failed(failed) => Some(failed.ended_at_ms),
            Phase::Running | Phase::Compensating(_) => None,
        }
    }
}

/// What the current exchange of a unit waits for.
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

/// The command exchange a unit has under way: its action's, or its
/// compensation's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub kind: CommandKind,
    /// The attempt sent last (or, while backing off, the one that failed).
    pub attempt: u32,
    pub request_id: RequestId,
    /// Our span for this attempt: the parent id of its `traceparent`.
    pub span_id: SpanId,
    pub sent_at_ms: UnixMillis,
    pub waiting: Waiting,
    /// Set once any attempt of this action timed out: its effect is
    /// unknown, so the unit must be undone if the saga fails.
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
    /// The branch that failed, when a branch of a fan-out did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<u32>,
    pub reason: String,
    /// The operator's key name when the saga unwinds because an operator
    /// cancelled it, rather than because a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// Where one unit is. Tagged from outside (`{"acting": {...}}`): a
/// result kept as raw JSON cannot be read back from inside a tagged map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Its action is under way: sent, or waiting to be sent again.
    Acting(Exchange),
    /// Its action completed. A branch keeps its result until its fan-out
    /// completes and gathers the results into the step's.
    Completed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Json>,
    },
    /// Its action ended without completing: failed for good, or stopped
    /// while the saga unwinds. `effect_unknown` when an attempt of it timed
    /// out or was under way when the saga was cancelled: it may have done
    /// its work, so it is undone like a completed one. A unit whose
    /// compensation an operator retries comes back here too, with its
    /// effect unknown, to be undone again.
    Ended {
        effect_unknown: bool,
    },
    /// A `wait` step waits for its signal.
    Awaiting(SignalWait),
    /// Its compensation is under way.
    Undoing(Exchange),
    Undone,
    /// Not undone: its step defines no compensation, or an operator marked
    /// its failed compensation as done by hand.
    Skipped {
        by_hand: bool,
    },
    /// Its compensation failed for good.
    Stuck {
        error: String,
    },
}

impl UnitState {
    pub fn exchange(&self) -> Option<&Exchange> {
        match self {
            UnitState::Acting(x) | UnitState::Undoing(x) => Some(x),
            _ => None,
        }
    }

    /// Done with an effect that is still to be undone, should the saga
    /// unwind.
    pub fn to_undo(&self) -> bool {
        matches!(
            self,
            UnitState::Completed { .. }
                | UnitState::Ended {
                    effect_unknown: true
                }
        )
    }
}

/// A `wait` step's unit, waiting for its signal until `deadline_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalWait {
    pub signal: String,
    pub since_ms: UnixMillis,
    pub deadline_ms: UnixMillis,
}

/// A step taking its semantic locks, one after the other in the order of
/// their names, before any of its units starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockWait {
    /// The locks still to take, in order: the first is being asked for.
    /// Empty once all are held: the step starts at the next chance (not
    /// while the saga is paused).
    pub pending: Vec<String>,
    pub since_ms: UnixMillis,
    /// When the step fails if it still waits.
    pub deadline_ms: UnixMillis,
    /// The saga holding the lock asked for, and how many are ahead, as
    /// last heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead: Option<usize>,
}

impl LockWait {
    /// Its clock moved on by `by_ms` (see [`Waiting::postpone`]).
    pub fn postpone(&mut self, by_ms: u64) {
        self.deadline_ms = self.deadline_ms.saturating_add(by_ms);
    }
}

/// A semantic lock the saga holds: until it completes or has finished
/// compensating.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    /// The step that took it.
    pub step: String,
    pub since_ms: UnixMillis,
}

/// What a saga waits for from outside its commands' replies: the daemon
/// driving it asks, and hands the answers in as events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Lock `name`, for step `step` (see [`crate::store::locks`]).
    Lock { name: String, step: usize },
    /// The signal `name` (see [`crate::store::signals`]).
    Signal { name: String },
}

/// A step that has started, with its units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepWork {
    /// A fan-out's elements, taken when the step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Json>>,
    /// Set while the step takes its locks; no unit starts before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locking: Option<LockWait>,
    /// The units started so far, by branch (one for a plain step).
    pub units: Vec<UnitState>,
}

impl StepWork {
    /// Every unit the step has: its branches, or one.
    pub fn total(&self) -> usize {
        self.items.as_ref().map_or(1, Vec::len)
    }

    pub fn unit(&self, step: usize, slot: usize) -> Unit {
        let branch = self.items.as_ref().map(|_| slot as u32);
        Unit { step, branch }
    }

    /// Every unit started, and each of them completed.
    pub fn completed(&self) -> bool {
        self.units.len() == self.total()
            && (self.units.iter()).all(|u| matches!(u, UnitState::Completed { .. }))
    }
}

/// What the saga's steps have done so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// The steps that have started, by index.
    pub steps: BTreeMap<usize, StepWork>,
    /// The units whose actions ended with an effect to undo (completed, or
    /// with an effect unknown), in the order they ended: unwinding undoes
    /// them in reverse.
    pub done: Vec<Unit>,
    /// The units undone so far, in the order undone.
    pub undone: Vec<Unit>,
    /// The units not undone (see [`UnitState::Skipped`]), in that order.
    pub skipped: Vec<Unit>,
}

impl Work {
    pub fn get(&self, unit: Unit) -> Option<&UnitState> {
        self.steps.get(&unit.step)?.units.get(unit.slot())
    }

    pub fn get_mut(&mut self, unit: Unit) -> Option<&mut UnitState> {
        self.steps.get_mut(&unit.step)?.units.get_mut(unit.slot())
    }

    /// Every unit started, with where it is, in step then branch order.
    pub fn units(&self) -> impl Iterator<Item = (Unit, &UnitState)> {
        self.steps.iter().flat_map(|(&step, work)| {
            let unit = move |(slot, state)| (work.unit(step, slot), state);
            work.units.iter().enumerate().map(unit)
        })
    }

    /// The exchanges under way, with their units.
    pub fn exchanges(&self) -> impl Iterator<Item = (Unit, &Exchange)> {
        self.units()
            .filter_map(|(unit, state)| Some((unit, state.exchange()?)))
    }

    /// The branch's element, for a branch of a fan-out.
    pub fn item(&self, unit: Unit) -> Option<&Json> {
        let items = self.steps.get(&unit.step)?.items.as_ref()?;
        items.get(unit.slot())
    }
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
    /// daemon resuming the saga ends the same span.
    #[serde(default)]
    pub span_id: Option<SpanId>,
    /// Where handlers send their replies for this saga.
    pub reply_stream: String,
    /// The saga's input (its start's payload).
    pub input: Json,
    /// Results of completed steps, by step name; a fan-out's is the list
    /// of its branches' results, in the order of its elements.
    pub results: BTreeMap<String, Json>,
    pub phase: Phase,
    pub work: Work,
    /// Times an operator set the saga going again after it failed.
    #[serde(default)]
    pub rescues: u32,
    pub started_at_ms: UnixMillis,
    /// Set while an operator has paused the saga: commands under way
    /// finish, nothing new is sent, and no clock runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    /// The semantic locks the saga holds, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locks: BTreeMap<String, HeldLock>,
}

/// Who paused a saga, why, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub by: String,
    pub reason: String,
    pub since_ms: UnixMillis,
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
    /// Every clock moved on by `by_ms`: the time a saga was paused does
    /// not count against them.
    pub fn postpone(&mut self, by_ms: u64) {
        let later = |at: &mut UnixMillis| *at = at.saturating_add(by_ms);
        match self {
            Waiting::Reply {
                deadline_ms,
                ack_by_ms,
                heartbeat_by_ms,
            } => {
                later(deadline_ms);
                ack_by_ms.iter_mut().for_each(later);
                heartbeat_by_ms.iter_mut().for_each(later);
            }
            Waiting::Backoff { until_ms } => later(until_ms),
        }
    }

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
    /// When the machine next needs a [`super::Event::Tick`], if ever: the
    /// earliest clock of the exchanges under way; never while paused.
    pub fn wake_at(&self) -> Option<UnixMillis> {
        if self.paused.is_some() {
            return None;
        }
        let due = |(_, x): (Unit, &Exchange)| x.waiting.due_ms();
        let exchanges = self.work.exchanges().map(due);
        let locks = (self.work.steps.values())
            .filter_map(|w| w.locking.as_ref())
            .filter(|l| !l.pending.is_empty())
            .map(|l| l.deadline_ms);
        let signals = self.work.units().filter_map(|(_, u)| match u {
            UnitState::Awaiting(w) => Some(w.deadline_ms),
            _ => None,
        });
        exchanges.chain(locks).chain(signals).min()
    }

    /// What the saga waits for from outside: the lock each locking step
    /// asks for, the signal each `wait` step waits for. Nothing once it
    /// ended.
    pub fn asks(&self) -> Vec<Ask> {
        if self.phase.is_terminal() {
            return Vec::new();
        }
        let mut asks: Vec<Ask> = (self.work.steps.iter())
            .filter_map(|(&step, w)| {
                let name = w.locking.as_ref()?.pending.first()?.clone();
                Some(Ask::Lock { name, step })
            })
            .collect();
        asks.extend(self.work.units().filter_map(|(_, u)| match u {
            UnitState::Awaiting(w) => Some(Ask::Signal {
                name: w.signal.clone(),
            }),
            _ => None,
        }));
        asks
    }

    pub fn failure(&self) -> Option<&Failure> {
        self.phase.failure()
    }

    /// Who gave the saga up, if an operator did.
    pub fn abandoned_by(&self) -> Option<&str> {
        match &self.phase {
            Phase::Failed(failed) => failed.abandoned_by.as_deref(),
            _ => None,
        }
    }

    /// Why the saga was set aside, if it was parked.
    pub fn parked(&self) -> Option<&Parked> {
        match &self.phase {
            Phase::Failed(Failed {
                halt: Halt::Parked(parked),
                ..
            }) => Some(parked),
            _ => None,
        }
    }

    /// The units whose compensation failed for good, with the error.
    pub fn stuck(&self) -> impl Iterator<Item = (Unit, &str)> {
        self.work.units().filter_map(|(unit, state)| match state {
            UnitState::Stuck { error } => Some((unit, error.as_str())),
            _ => None,
        })
    }
}
