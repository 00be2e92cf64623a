//! The failure side of the saga rules: an attempt that failed or timed out
//! is retried, or ends its step; a step that failed for good starts the
//! unwinding, compensations run in reverse order, and the saga ends
//! compensated, or failed when a compensation cannot complete.

use super::{ms, Machine, Miss};
use crate::protocol::{CommandKind, EventType};
use crate::saga::backoff::retry_delay;
use crate::saga::state::{Exchange, Failure, Phase, Waiting};
use serde_json::json;

impl Machine<'_> {
    /// An attempt that ended without completing: retried if its policy
    /// allows, else the step (or the compensation) has failed for good.
    pub(super) fn on_failed(&mut self, x: &Exchange, step: String, miss: Miss) {
        let policy = self.policy(x);
        let (error, retryable, timed_out) = match &miss {
            Miss::Failed { error, retryable } => (error.clone(), *retryable, false),
            Miss::TimedOut { reason, .. } => (reason.clone(), true, true),
        };
        let any_timeout = x.timed_out || timed_out;
        if retryable && x.attempt < policy.max_attempts {
            let delay = ms(retry_delay(&policy, x.attempt));
            self.state.current = Some(Exchange {
                waiting: Waiting::Backoff {
                    until_ms: self.now.saturating_add(delay),
                },
                timed_out: any_timeout,
                ..x.clone()
            });
            self.emit_miss(x, &step, &miss);
            let retrying = match x.kind {
                CommandKind::Action => EventType::StepRetrying,
                CommandKind::Compensation => EventType::CompensationRetrying,
            };
            self.emit(
                retrying,
                Some(&step),
                json!({ "attempt": x.attempt + 1, "delay_ms": delay }),
            );
            return;
        }
        self.state.current = None;
        let reason = if retryable && x.attempt > 1 {
            format!("{error} (after {} attempts)", x.attempt)
        } else {
            error
        };
        match x.kind {
            CommandKind::Action => {
                self.fail_saga(x.step, reason, any_timeout);
                self.emit_miss(x, &step, &miss);
                self.next_compensation();
            }
            CommandKind::Compensation => {
                self.state.phase = Phase::Failed;
                self.state.ended_at_ms = Some(self.now);
                self.state.stuck_at = Some(x.step);
                self.emit_miss(x, &step, &miss);
                let failure = self
                    .state
                    .failure
                    .clone()
                    .expect("compensating implies a failure");
                let compensation = self.command_name(x).to_owned();
                self.emit(
                    EventType::SagaFailed,
                    Some(&step),
                    json!({
                        "failed_step": failure.step,
                        "reason": failure.reason,
                        "compensation": step,
                        "compensation_command": compensation,
                        "error": reason,
                        "compensated": self.state.undone,
                    }),
                );
            }
        }
    }

    /// The event of an attempt that failed or timed out.
    pub(super) fn emit_miss(&mut self, x: &Exchange, step: &str, miss: &Miss) {
        let action = x.kind == CommandKind::Action;
        match miss {
            Miss::TimedOut { clock, .. } => {
                let event = if action {
                    EventType::StepTimedOut
                } else {
                    EventType::CompensationTimedOut
                };
                self.emit(
                    event,
                    Some(step),
                    json!({ "attempt": x.attempt, "request_id": x.request_id, "timeout": clock.as_str() }),
                );
            }
            Miss::Failed { error, retryable } => {
                let event = if action {
                    EventType::StepFailed
                } else {
                    EventType::CompensationFailed
                };
                self.emit(
                    event,
                    Some(step),
                    json!({ "attempt": x.attempt, "error": error, "retryable": retryable, "request_id": x.request_id }),
                );
            }
        }
    }

    /// Records the failure and queues the steps to undo, in reverse order:
    /// every completed step, and the failing one if its effect is unknown.
    pub(super) fn fail_saga(&mut self, index: usize, reason: String, undo_failing_step: bool) {
        self.state.phase = Phase::Compensating;
        self.state.failure = Some(Failure {
            step: self.def.steps[index].name.clone(),
            reason,
            cancelled_by: None,
        });
        let mut queue: Vec<usize> = (0..index).rev().collect();
        if undo_failing_step {
            queue.insert(0, index);
        }
        for i in queue {
            if self.def.steps[i].compensation.is_some() {
                self.state.to_undo.push(i);
            } else {
                self.state.skipped.push(self.def.steps[i].name.clone());
            }
        }
    }

    pub(super) fn next_compensation(&mut self) {
        if self.state.to_undo.is_empty() {
            self.state.phase = Phase::Compensated;
            self.state.ended_at_ms = Some(self.now);
            let failure = self
                .state
                .failure
                .clone()
                .expect("compensating implies a failure");
            self.emit(EventType::SagaCompensated, None, {
                let mut payload = json!({
                    "failed_step": failure.step,
                    "reason": failure.reason,
                    "compensated": self.state.undone,
                    "skipped": self.state.skipped,
                });
                if let Some(by) = &failure.cancelled_by {
                    payload["cancelled_by"] = by.as_str().into();
                }
                payload
            });
        } else {
            let next = self.state.to_undo.remove(0);
            self.send_compensation(next, 1);
        }
    }
}
