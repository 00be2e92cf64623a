//! What operators do to a saga: cancel it while it runs (it compensates what
//! it did), and rescue one stuck on a compensation that failed for good:
//! run that compensation again, mark it done by hand, or abandon the saga.
//! Every action, accepted or refused, is an `operator_action` event naming
//! who asked and why.

use super::Machine;
use crate::protocol::{EventType, Reply};
use crate::saga::state::{Parked, Phase, Waiting};
use serde::{Deserialize, Serialize};
use serde_json::json;

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
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Retry => "retry",
            Action::Skip { .. } => "skip",
            Action::Abandon => "abandon",
        }
    }
}

impl Machine<'_> {
    pub(super) fn on_operator(&mut self, request: OperatorRequest) {
        if let Some(why) = &request.unproven {
            let refused = format!("not an operator's request: {why}");
            return self.emit_action(&request, Some(&refused), None);
        }
        if let Err(refused) = self.operate(&request) {
            self.emit_action(&request, Some(&refused), None);
        }
    }

    fn operate(&mut self, request: &OperatorRequest) -> Result<(), String> {
        let phase = self.state.phase;
        match &request.action {
            Action::Cancel => {
                if phase != Phase::Running {
                    return Err(format!(
                        "the saga is {}: only a running saga can be cancelled",
                        phase.status().as_str()
                    ));
                }
                let x = self.state.current.take().ok_or("no step under way")?;
                // An attempt awaiting its reply may have done its work: it
                // is undone too, as after a timeout.
                let in_flight = matches!(x.waiting, Waiting::Reply { .. });
                let step = self.def.steps[x.step].name.clone();
                let reason = format!("cancelled by {}: {}", request.by, request.reason);
                self.fail_saga(x.step, reason, in_flight || x.timed_out);
                if let Some(failure) = self.state.failure.as_mut() {
                    failure.cancelled_by = Some(request.by.clone());
                }
                self.emit_action(request, None, Some(&step));
                self.next_compensation();
            }
            Action::Retry | Action::Skip { .. } | Action::Abandon
                if self.state.parked.is_some()
                    && phase == Phase::Failed
                    && !self.state.abandoned =>
            {
                let step = self.current_step();
                match &request.action {
                    Action::Retry => {
                        let replies = self.unpark();
                        self.emit_action(request, None, step.as_deref());
                        for reply in replies {
                            self.on_reply(reply);
                        }
                    }
                    Action::Abandon => {
                        self.state.abandoned = true;
                        self.emit_action(request, None, step.as_deref());
                    }
                    _ => {
                        return Err(
                            "the saga was set aside because a transition of it could not be written, not on a failed compensation: retry or abandon it"
                                .into(),
                        )
                    }
                }
            }
            Action::Retry | Action::Skip { .. } | Action::Abandon => {
                let stuck = self.stuck_compensation(phase)?;
                let step = self.def.steps[stuck].name.clone();
                match &request.action {
                    Action::Retry => {
                        self.reopen();
                        self.emit_action(request, None, Some(&step));
                        self.send_compensation(stuck, 1);
                    }
                    Action::Skip { step: named } => {
                        if *named != step {
                            return Err(format!(
                                "the compensation that failed is {step}'s, not {named}'s"
                            ));
                        }
                        self.reopen();
                        self.state.skipped.push(step.clone());
                        self.emit_action(request, None, Some(&step));
                        self.next_compensation();
                    }
                    _ => {
                        self.state.abandoned = true;
                        self.state.stuck_at = None;
                        self.emit_action(request, None, Some(&step));
                    }
                }
            }
        }
        Ok(())
    }

    /// The step whose compensation failed for good, if the saga is stuck.
    fn stuck_compensation(&self, phase: Phase) -> Result<usize, String> {
        if phase != Phase::Failed || self.state.abandoned {
            return Err(format!(
                "the saga is {}{}: only a saga stuck on a failed compensation can be retried, skipped or abandoned",
                phase.status().as_str(),
                if self.state.abandoned { " and abandoned" } else { "" }
            ));
        }
        self.state
            .stuck_at
            .ok_or_else(|| "the record does not say which compensation failed".to_owned())
    }

    /// Sets a saga aside as failed (see [`crate::saga::park`]).
    pub(in crate::saga) fn park(&mut self, reason: String, replies: Vec<Reply>) {
        let phase = self.state.phase;
        let step = self.current_step();
        let compensating = phase == Phase::Compensating;
        self.state.parked = Some(Parked {
            phase,
            reason: reason.clone(),
            replies,
        });
        self.state.phase = Phase::Failed;
        self.state.ended_at_ms = Some(self.now);
        let failed_step = match &self.state.failure {
            Some(f) => f.step.clone(),
            None => step.clone().unwrap_or_default(),
        };
        let payload = json!({
            "failed_step": failed_step,
            "reason": reason,
            "compensation": if compensating { step.clone() } else { None },
            "error": reason,
            "parked": true,
            "compensated": self.state.undone,
        });
        self.emit(EventType::SagaFailed, step.as_deref(), payload);
    }

    /// Back to the phase a parked saga was in. Returns the final replies
    /// it could not record, to be applied again; its attempt under way (if
    /// still under way after them) goes on from its recorded deadline or
    /// backoff.
    fn unpark(&mut self) -> Vec<Reply> {
        let Some(parked) = self.state.parked.take() else {
            return Vec::new();
        };
        self.state.rescues += 1;
        self.state.phase = parked.phase;
        self.state.ended_at_ms = None;
        parked.replies
    }

    /// The step of the exchange under way, if any.
    fn current_step(&self) -> Option<String> {
        let x = self.state.current.as_ref()?;
        Some(self.def.steps[x.step].name.clone())
    }

    /// Back to compensating, from failed.
    fn reopen(&mut self) {
        self.state.rescues += 1;
        self.state.phase = Phase::Compensating;
        self.state.ended_at_ms = None;
        self.state.stuck_at = None;
    }

    fn emit_action(
        &mut self,
        request: &OperatorRequest,
        refused: Option<&str>,
        step: Option<&str>,
    ) {
        let mut payload = json!({
            "action": request.action.name(),
            "by": request.by,
            "reason": request.reason,
            "verified": request.unproven.is_none(),
        });
        if let Some(refused) = refused {
            payload["refused"] = json!(refused);
        }
        self.emit(EventType::OperatorAction, step, payload);
    }
}
