//! The failure side of the saga rules: an attempt that failed or timed out
//! is retried, or ends its unit; a unit that failed for good unwinds the
//! saga, and compensations undo what was done.
//!
//! **Unwinding.** When a step or branch fails for good, nothing new starts:
//! no step, no branch, no retry. Attempts already sent run to their end
//! (their reply, or a clock running out), so that what they did is known:
//! a completed one is undone, a failed one is not, and one that timed out
//! is undone as if it had completed (its effect is unknown). Then every
//! unit to undo is undone, in reverse order of the graph: a unit's
//! compensation starts once every unit of the steps that waited for its
//! step (directly or not) is undone, skipped or never ran. Units with no
//! such path between them (the branches of one fan-out, steps on parallel
//! paths) are undone at the same time, a fan-out's branches at most
//! `max_concurrency` at once; among those ready together, the unit that
//! completed last starts first. A sequence of steps is therefore undone
//! strictly in reverse, as before branches existed. A compensation that
//! fails for good holds back only the units that must wait for it; the
//! saga ends failed once nothing else can be undone.

use super::{ms, payload, Machine, Miss};
use crate::protocol::{CommandKind, EventType};
use crate::saga::backoff::retry_delay;
use crate::saga::state::{Exchange, Failed, Failure, Halt, Phase, Unit, UnitState, Waiting};
use std::collections::BTreeSet;

impl Machine<'_> {
    /// An attempt that ended without completing: retried if its policy
    /// allows (and, for an action, while the saga still goes forward),
    /// else its unit has failed for good.
    pub(super) fn on_failed(&mut self, unit: Unit, x: &Exchange, miss: Miss) {
        let policy = self.policy(unit, x);
        let (error, retryable, timed_out) = match &miss {
            Miss::Failed { error, retryable } => (error.clone(), *retryable, false),
            Miss::TimedOut { reason, .. } => (reason.clone(), true, true),
        };
        let any_timeout = x.timed_out || timed_out;
        let forward = x.kind == CommandKind::Compensation || self.state.phase == Phase::Running;
        if retryable && x.attempt < policy.max_attempts && forward {
            let delay = ms(retry_delay(&policy, x.attempt));
            let backoff = Exchange {
                waiting: Waiting::Backoff {
                    until_ms: self.now.saturating_add(delay),
                },
                timed_out: any_timeout,
                ..x.clone()
            };
            let (state, retrying) = match x.kind {
                CommandKind::Action => (UnitState::Acting(backoff), EventType::StepRetrying),
                CommandKind::Compensation => {
                    (UnitState::Undoing(backoff), EventType::CompensationRetrying)
                }
            };
            self.set_unit(unit, state);
            self.emit_miss(unit, x, &miss);
            let retry = payload::Retrying {
                attempt: x.attempt + 1,
                delay_ms: delay,
            };
            self.emit(retrying, Some(unit), &retry);
            return;
        }
        let reason = if retryable && x.attempt > 1 {
            format!("{error} (after {} attempts)", x.attempt)
        } else {
            error
        };
        match x.kind {
            CommandKind::Action => {
                self.end_action(unit, any_timeout);
                self.fail_saga(unit, reason);
                self.emit_miss(unit, x, &miss);
            }
            CommandKind::Compensation => {
                self.set_unit(unit, UnitState::Stuck { error: reason });
                self.emit_miss(unit, x, &miss);
            }
        }
        self.advance();
    }

    /// Ends a unit's action without completion; with an effect unknown it
    /// is to be undone.
    fn end_action(&mut self, unit: Unit, effect_unknown: bool) {
        self.set_unit(unit, UnitState::Ended { effect_unknown });
        if effect_unknown {
            self.st().work.done.push(unit);
        }
    }

    /// The event of an attempt that failed or timed out.
    pub(super) fn emit_miss(&mut self, unit: Unit, x: &Exchange, miss: &Miss) {
        let action = x.kind == CommandKind::Action;
        match miss {
            Miss::TimedOut { clock, .. } => {
                let event = match action {
                    true => EventType::StepTimedOut,
                    false => EventType::CompensationTimedOut,
                };
                let timed_out = payload::AttemptTimedOut {
                    attempt: x.attempt,
                    request_id: x.request_id.clone(),
                    timeout: clock.as_str().to_owned(),
                };
                self.emit(event, Some(unit), &timed_out);
            }
            Miss::Failed { error, retryable } => {
                let event = match action {
                    true => EventType::StepFailed,
                    false => EventType::CompensationFailed,
                };
                let failed = payload::AttemptFailed {
                    attempt: x.attempt,
                    error: error.clone(),
                    retryable: *retryable,
                    request_id: Some(x.request_id.clone()),
                };
                self.emit(event, Some(unit), &failed);
            }
        }
    }

    /// A unit failed for good: the saga starts unwinding, if it was not
    /// already. Actions waiting to be retried stop; those sent run on.
    pub(super) fn fail_saga(&mut self, unit: Unit, reason: String) {
        if self.state.phase != Phase::Running {
            return;
        }
        let failure = Failure {
            step: self.step_name(unit.step).to_owned(),
            branch: unit.branch,
            reason,
            cancelled_by: None,
        };
        self.st().phase = Phase::Compensating(failure);
        self.stop_waits();
        let waiting: Vec<(Unit, bool)> = (self.state.work.units())
            .filter_map(|(u, s)| match s {
                UnitState::Acting(x) if matches!(x.waiting, Waiting::Backoff { .. }) => {
                    Some((u, x.timed_out))
                }
                _ => None,
            })
            .collect();
        for (unit, timed_out) in waiting {
            self.end_action(unit, timed_out);
        }
    }

    /// One round of unwinding; true if anything started or ended.
    pub(super) fn unwind(&mut self) -> bool {
        let work = &self.state.work;
        if work.units().any(|(_, s)| matches!(s, UnitState::Acting(_))) {
            // Actions under way first: what they did decides what to undo.
            return false;
        }
        let mut progressed = false;
        // Newest first: the order of undoing among units ready together.
        let to_undo: Vec<Unit> = (work.done.iter().rev())
            .filter(|u| work.get(**u).is_some_and(UnitState::to_undo))
            .copied()
            .collect();
        let mut waiting = Vec::new();
        for unit in to_undo {
            if self.def.steps[unit.step].compensation.is_none() {
                self.set_unit(unit, UnitState::Skipped { by_hand: false });
                self.st().work.skipped.push(unit);
                progressed = true;
            } else {
                waiting.push(unit);
            }
        }
        // A unit waits while a step that waited for its step has units
        // still to undo, being undone, or stuck.
        let held: BTreeSet<usize> = (self.steps_holding_back().into_iter())
            .flat_map(|later| self.def.ancestors(later))
            .collect();
        for unit in waiting {
            let blocked = held.contains(&unit.step);
            if blocked || self.undoing(unit.step) >= self.concurrency(unit.step) {
                continue;
            }
            self.send_compensation(unit, 1);
            progressed = true;
        }
        let work = &self.state.work;
        let busy = work
            .units()
            .any(|(_, s)| matches!(s, UnitState::Undoing(_)));
        if busy {
            return progressed;
        }
        let Phase::Compensating(failure) = &self.state.phase else {
            return progressed;
        };
        let failure = failure.clone();
        if self.state.stuck().next().is_some() {
            self.end_failed(failure);
        } else {
            self.end_compensated(failure);
        }
        true
    }

    /// Steps with a unit that others may have to wait for: still to undo,
    /// being undone, or stuck.
    fn steps_holding_back(&self) -> BTreeSet<usize> {
        let holds = |s: &UnitState| {
            s.to_undo() || matches!(s, UnitState::Undoing(_) | UnitState::Stuck { .. })
        };
        (self.state.work.units())
            .filter(|(_, s)| holds(s))
            .map(|(u, _)| u.step)
            .collect()
    }

    /// The stuck unit whose compensation an operator's retry starts
    /// first: the one that completed last, as when unwinding (every unit
    /// undone was in `done`). `saga_failed` names it.
    pub(super) fn first_stuck(&self) -> Option<Unit> {
        let work = &self.state.work;
        let stuck = |u: &&Unit| matches!(work.get(**u), Some(UnitState::Stuck { .. }));
        work.done.iter().rev().find(stuck).copied()
    }

    /// Units of `step` whose compensation is under way.
    fn undoing(&self, step: usize) -> usize {
        let work = self.state.work.steps.get(&step);
        let units = work.map_or(&[][..], |w| &w.units[..]);
        units
            .iter()
            .filter(|s| matches!(s, UnitState::Undoing(_)))
            .count()
    }

    fn labels(&self, units: &[Unit]) -> Vec<String> {
        units.iter().map(|u| self.label(*u)).collect()
    }

    fn end_compensated(&mut self, failure: Failure) {
        let compensated = payload::SagaCompensated {
            failed_step: failure.step.clone(),
            reason: failure.reason.clone(),
            compensated: self.labels(&self.state.work.undone),
            skipped: self.labels(&self.state.work.skipped),
            cancelled_by: failure.cancelled_by.clone(),
        };
        self.st().phase = Phase::Compensated {
            failure,
            ended_at_ms: self.now,
        };
        self.emit(EventType::SagaCompensated, None, &compensated);
    }

    fn end_failed(&mut self, failure: Failure) {
        let stuck: Vec<(Unit, String)> = (self.state.stuck())
            .map(|(u, e)| (u, e.to_owned()))
            .collect();
        let first = self.first_stuck().expect("a compensation is stuck");
        let error = (stuck.iter().find(|(u, _)| *u == first))
            .map(|(_, e)| e.clone())
            .expect("the first stuck unit is stuck");
        let compensation_command = self.target(first.step, CommandKind::Compensation).command;
        let failed = payload::SagaFailed {
            failed_step: failure.step.clone(),
            reason: failure.reason.clone(),
            compensation: Some(self.label(first)),
            compensation_command: Some(compensation_command.to_owned()),
            error,
            compensated: self.labels(&self.state.work.undone),
            stuck: match stuck.len() {
                1 => Vec::new(),
                _ => stuck.iter().map(|(u, _)| self.label(*u)).collect(),
            },
            parked: false,
        };
        self.st().phase = Phase::Failed(Failed {
            ended_at_ms: self.now,
            halt: Halt::Compensation { failure },
            abandoned_by: None,
        });
        self.emit(EventType::SagaFailed, Some(first), &failed);
    }
}
