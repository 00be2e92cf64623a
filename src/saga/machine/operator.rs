//! What operators do to a saga: cancel it while it runs (it compensates what
//! it did), and rescue one stuck on a compensation that failed for good:
//! run that compensation again, mark it done by hand, or abandon the saga.
//! Every action, accepted or refused, is an `operator_action` event naming
//! who asked and why.

use super::{payload, Machine};
use crate::protocol::{EventType, Reply};
use crate::saga::state::{
    Exchange, Failed, Failure, Halt, Parked, Phase, Unit, UnitState, Waiting,
};
use serde::{Deserialize, Serialize};

/// An operator's request about one saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub action: Action,
    /// Who asked: the name of the operator's key it is signed with.
    pub by: String,
    pub reason: String,
    /// Why the request is not proven to come from `by` (unsigned, a bad
    /// signature, a replay): it is refused, and the refusal recorded.
    #[serde(default)]
    pub unproven: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Stop a running saga; it compensates what it did.
    Cancel,
    /// Run the failed compensation of a stuck saga again, and carry on.
    Retry,
    /// Mark the failed compensation of a stuck saga, `step`, as done by
    /// hand, and carry on.
    Skip { step: String },
    /// Give a stuck saga up: it stays failed, and needs no one any more.
    Abandon,
    /// Let a running or compensating saga's commands under way finish,
    /// send nothing new, and stop its clocks.
    Pause,
    /// Carry a paused saga on, its clocks moved on by the time it was
    /// paused.
    Resume,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Retry => "retry",
            Action::Skip { .. } => "skip",
            Action::Abandon => "abandon",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

impl Machine<'_> {
    pub(super) fn on_operator(&mut self, request: OperatorRequest) {
        if let Some(why) = &request.unproven {
            let refused = format!("not an operator's request: {why}");
            return self.emit_action(&request, Some(&refused), None);
        }
        match self.operate(&request) {
            Ok(()) => self.advance(),
            Err(refused) => self.emit_action(&request, Some(&refused), None),
        }
    }

    fn operate(&mut self, request: &OperatorRequest) -> Result<(), String> {
        let status = self.state.phase.status();
        match &request.action {
            Action::Cancel => {
                if self.state.phase != Phase::Running {
                    return Err(format!(
                        "the saga is {}: only a running saga can be cancelled",
                        status.as_str()
                    ));
                }
                let acting: Vec<(Unit, Exchange)> = (self.state.work.units())
                    .filter_map(|(u, s)| match s {
                        UnitState::Acting(x) => Some((u, x.clone())),
                        _ => None,
                    })
                    .collect();
                // The first step under way: acting, else waiting for a
                // signal or for its locks.
                let awaiting = (self.state.work.units())
                    .find(|(_, s)| matches!(s, UnitState::Awaiting(_)))
                    .map(|(u, _)| u);
                let locking = (self.state.work.steps.iter())
                    .find(|(_, w)| w.locking.is_some())
                    .map(|(s, _)| Unit::step(*s));
                let first = (acting.first().map(|(u, _)| *u))
                    .or(awaiting)
                    .or(locking)
                    .ok_or("no step under way")?;
                // An attempt awaiting its reply may have done its work: it
                // is undone too, as after a timeout.
                for (unit, x) in &acting {
                    let in_flight = matches!(x.waiting, Waiting::Reply { .. });
                    self.set_unit(
                        *unit,
                        UnitState::Ended {
                            effect_unknown: in_flight || x.timed_out,
                        },
                    );
                    if in_flight || x.timed_out {
                        self.st().work.done.push(*unit);
                    }
                }
                self.st().phase = Phase::Compensating(Failure {
                    step: self.step_name(first.step).to_owned(),
                    branch: first.branch,
                    reason: format!("cancelled by {}: {}", request.by, request.reason),
                    cancelled_by: Some(request.by.clone()),
                });
                self.stop_waits();
                self.emit_action(request, None, Some(first));
            }
            Action::Pause => {
                if self.state.phase.is_terminal() {
                    return Err(format!(
                        "the saga is {}: only a running or compensating saga can be paused",
                        status.as_str()
                    ));
                }
                if let Some(p) = &self.state.paused {
                    return Err(format!("the saga is paused already, by {}", p.by));
                }
                let pause = crate::saga::state::Pause {
                    by: request.by.clone(),
                    reason: request.reason.clone(),
                    since_ms: self.now,
                };
                self.st().paused = Some(pause);
                self.emit_action(request, None, None);
            }
            Action::Resume => {
                let Some(pause) = self.state.paused.clone() else {
                    return Err(format!("the saga is {}, not paused", status.as_str()));
                };
                // The time paused does not count against any clock.
                let paused_for = self.now.saturating_sub(pause.since_ms);
                let under_way: Vec<Unit> = self.state.work.exchanges().map(|(u, _)| u).collect();
                for unit in under_way {
                    if let Some(UnitState::Acting(x) | UnitState::Undoing(x)) =
                        self.st().work.get_mut(unit)
                    {
                        x.waiting.postpone(paused_for);
                    }
                }
                for work in self.st().work.steps.values_mut() {
                    if let Some(wait) = &mut work.locking {
                        wait.postpone(paused_for);
                    }
                    for unit in &mut work.units {
                        if let UnitState::Awaiting(wait) = unit {
                            wait.deadline_ms = wait.deadline_ms.saturating_add(paused_for);
                        }
                    }
                }
                self.st().paused = None;
                let action = payload::OperatorAction {
                    action: request.action.name().to_owned(),
                    by: request.by.clone(),
                    reason: request.reason.clone(),
                    verified: request.unproven.is_none(),
                    refused: None,
                    paused_for_ms: Some(paused_for),
                    paused_by: Some(pause.by),
                    pause_reason: Some(pause.reason),
                };
                self.emit(EventType::OperatorAction, None, &action);
            }
            Action::Retry | Action::Skip { .. } | Action::Abandon => {
                let Phase::Failed(failed) = &self.state.phase else {
                    return Err(self.not_stuck(""));
                };
                if failed.abandoned_by.is_some() {
                    return Err(self.not_stuck(" and abandoned"));
                }
                match failed.halt.clone() {
                    Halt::Parked(parked) => self.rescue_parked(request, parked)?,
                    Halt::Compensation { failure } => self.rescue_stuck(request, failure)?,
                }
            }
        }
        Ok(())
    }

    fn not_stuck(&self, abandoned: &str) -> String {
        format!(
            "the saga is {}{abandoned}: only a saga stuck on a failed compensation can be retried, skipped or abandoned",
            self.state.phase.status().as_str(),
        )
    }

    /// Retry, skip or abandon a saga stuck on compensations that failed
    /// for good.
    fn rescue_stuck(&mut self, request: &OperatorRequest, failure: Failure) -> Result<(), String> {
        let stuck: Vec<Unit> = self.state.stuck().map(|(u, _)| u).collect();
        let first =
            (self.first_stuck()).ok_or("the record does not say which compensation failed")?;
        match &request.action {
            Action::Retry => {
                self.reopen(failure);
                self.emit_action(request, None, Some(first));
                // Back to be undone, as when unwinding: `advance` starts
                // them in reverse order of the graph, a fan-out's branches
                // at most `max_concurrency` at once (sending every stuck
                // one here would run all of a fan-out's at once). What a
                // failed compensation left of the effect is unknown.
                for unit in stuck {
                    let to_undo = UnitState::Ended {
                        effect_unknown: true,
                    };
                    self.set_unit(unit, to_undo);
                }
            }
            Action::Skip { step: named } => {
                let of_step: Vec<Unit> = (stuck.iter())
                    .filter(|u| self.step_name(u.step) == named)
                    .copied()
                    .collect();
                if of_step.is_empty() {
                    let failed = self.step_name(first.step);
                    return Err(format!(
                        "the compensation that failed is {failed}'s, not {named}'s"
                    ));
                }
                self.reopen(failure);
                for unit in &of_step {
                    self.set_unit(*unit, UnitState::Skipped { by_hand: true });
                    self.st().work.skipped.push(*unit);
                }
                // About the step: every stuck branch of it is skipped.
                self.emit_action(request, None, Some(Unit::step(of_step[0].step)));
            }
            _ => {
                self.abandon(request);
                self.emit_action(request, None, Some(first));
            }
        }
        Ok(())
    }

    /// Retry or abandon a saga set aside because a transition of it could
    /// not be written.
    fn rescue_parked(&mut self, request: &OperatorRequest, parked: Parked) -> Result<(), String> {
        let unit = self.first_under_way();
        match &request.action {
            Action::Retry => {
                self.st().rescues += 1;
                self.st().phase = *parked.resume;
                self.emit_action(request, None, unit);
                for reply in parked.replies {
                    // A reply no longer awaited is left alone, as when read.
                    let _ = self.on_reply(reply);
                }
            }
            Action::Abandon => {
                self.abandon(request);
                self.emit_action(request, None, unit);
            }
            _ => {
                return Err(
                    "the saga was set aside because a transition of it could not be written, not on a failed compensation: retry or abandon it"
                        .into(),
                )
            }
        }
        Ok(())
    }

    fn abandon(&mut self, request: &OperatorRequest) {
        if let Phase::Failed(failed) = &mut self.st().phase {
            failed.abandoned_by = Some(request.by.clone());
        }
    }

    /// Sets a saga aside as failed (see [`crate::saga::park`]).
    pub(in crate::saga) fn park(&mut self, reason: String, replies: Vec<Reply>) {
        let unit = self.first_under_way();
        let failed_step = match self.state.failure() {
            Some(f) => f.step.clone(),
            None => unit
                .map(|u| self.step_name(u.step).to_owned())
                .unwrap_or_default(),
        };
        let compensating = matches!(self.state.phase, Phase::Compensating(_));
        let payload = payload::SagaFailed {
            failed_step,
            reason: reason.clone(),
            compensation: unit.filter(|_| compensating).map(|u| self.label(u)),
            compensation_command: None,
            error: reason.clone(),
            compensated: self.labels_undone(),
            stuck: Vec::new(),
            parked: true,
        };
        let resume = Box::new(self.state.phase.clone());
        self.st().phase = Phase::Failed(Failed {
            ended_at_ms: self.now,
            halt: Halt::Parked(Parked {
                resume,
                reason,
                replies,
            }),
            abandoned_by: None,
        });
        self.emit(EventType::SagaFailed, unit, &payload);
    }

    fn labels_undone(&self) -> Vec<String> {
        let undone = &self.state.work.undone;
        undone.iter().map(|u| self.label(*u)).collect()
    }

    /// The first unit with an exchange under way, if any.
    fn first_under_way(&self) -> Option<Unit> {
        self.state.work.exchanges().map(|(u, _)| u).next()
    }

    /// Back to compensating, from failed.
    fn reopen(&mut self, failure: Failure) {
        self.st().rescues += 1;
        self.st().phase = Phase::Compensating(failure);
    }

    fn emit_action(
        &mut self,
        request: &OperatorRequest,
        refused: Option<&str>,
        unit: Option<Unit>,
    ) {
        let action = payload::OperatorAction {
            action: request.action.name().to_owned(),
            by: request.by.clone(),
            reason: request.reason.clone(),
            verified: request.unproven.is_none(),
            refused: refused.map(str::to_owned),
            paused_for_ms: None,
            paused_by: None,
            pause_reason: None,
        };
        self.emit(EventType::OperatorAction, unit, &action);
    }
}
