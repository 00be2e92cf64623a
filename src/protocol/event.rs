//! Saga lifecycle events: the entries of the audit stream (`saga:events`).

use super::fields as f;
use super::{CorrelationId, SagaId, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The saga's state after an event, as the `status` field carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
    Rejected,
    Duplicate,
    /// Of an operator's request about a saga name: the name is paused
    /// (its new starts wait) after it.
    Paused,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Failed => "failed",
            SagaStatus::Rejected => "rejected",
            SagaStatus::Duplicate => "duplicate",
            SagaStatus::Paused => "paused",
        }
    }

    /// True for the states a saga ends in.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            SagaStatus::Running | SagaStatus::Compensating | SagaStatus::Paused
        )
    }
}

/// Every event type the daemon writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    SagaStarted,
    SagaRejected,
    SagaDuplicate,
    StepStarted,
    StepProgress,
    StepCompleted,
    StepFailed,
    StepTimedOut,
    StepRetrying,
    CompensationStarted,
    CompensationProgress,
    CompensationCompleted,
    CompensationFailed,
    CompensationTimedOut,
    CompensationRetrying,
    SagaCompleted,
    SagaCompensated,
    SagaFailed,
    /// An operator's request, accepted or refused (`refused` says why).
    OperatorAction,
    /// A step waits for a semantic lock another saga holds.
    LockWaiting,
    /// A step took a semantic lock.
    LockAcquired,
    /// The saga let go of its semantic locks (it completed, finished
    /// compensating, or was abandoned).
    LocksReleased,
    /// A signal was kept for the saga (or was a duplicate of one kept).
    SignalReceived,
    /// A signal was refused (no such saga, not running, bad entry, ...).
    SignalRejected,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SagaStarted => "saga_started",
            EventType::SagaRejected => "saga_rejected",
            EventType::SagaDuplicate => "saga_duplicate",
            EventType::StepStarted => "step_started",
            EventType::StepProgress => "step_progress",
            EventType::StepCompleted => "step_completed",
            EventType::StepFailed => "step_failed",
            EventType::StepTimedOut => "step_timed_out",
            EventType::StepRetrying => "step_retrying",
            EventType::CompensationStarted => "compensation_started",
            EventType::CompensationProgress => "compensation_progress",
            EventType::CompensationCompleted => "compensation_completed",
            EventType::CompensationFailed => "compensation_failed",
            EventType::CompensationTimedOut => "compensation_timed_out",
            EventType::CompensationRetrying => "compensation_retrying",
            EventType::SagaCompleted => "saga_completed",
            EventType::SagaCompensated => "saga_compensated",
            EventType::SagaFailed => "saga_failed",
            EventType::OperatorAction => "operator_action",
            EventType::LockWaiting => "lock_waiting",
            EventType::LockAcquired => "lock_acquired",
            EventType::LocksReleased => "locks_released",
            EventType::SignalReceived => "signal_received",
            EventType::SignalRejected => "signal_rejected",
        }
    }
}

/// One audit event.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaEvent {
    pub correlation_id: CorrelationId,
    /// `None` only for `saga_rejected`, which is about no saga, and for a
    /// `signal_rejected` whose entry names no saga id that reads.
    pub saga_id: Option<SagaId>,
    pub saga: String,
    pub event_type: EventType,
    pub status: SagaStatus,
    pub step: Option<String>,
    /// The branch of a fan-out step the event is about, when it is about
    /// one (its position in the step's list).
    pub branch: Option<u32>,
    pub payload: Value,
    pub timestamp: UnixMillis,
}

impl SagaEvent {
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (f::CORRELATION_ID, self.correlation_id.to_string()),
            (
                f::SAGA_ID,
                self.saga_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            (f::SAGA, self.saga.clone()),
            (f::EVENT_TYPE, self.event_type.as_str().to_owned()),
            (f::STATUS, self.status.as_str().to_owned()),
        ];
        if let Some(step) = &self.step {
            out.push((f::STEP, step.clone()));
        }
        if let Some(branch) = self.branch {
            out.push((f::BRANCH, branch.to_string()));
        }
        out.push((f::PAYLOAD, self.payload.to_string()));
        out.push((f::TIMESTAMP, self.timestamp.to_string()));
        out
    }
}

/// One event of `saga:events` as a JSON object: its entry id, its fields,
/// the payload as JSON and the timestamp as a number.
pub fn entry_json(entry_id: &str, fields: &super::RawFields) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), Value::from(entry_id));
    let sorted: std::collections::BTreeMap<_, _> = fields.iter().collect();
    for (name, value) in sorted {
        let value = String::from_utf8_lossy(value);
        let value = match name.as_str() {
            f::PAYLOAD => serde_json::from_str(&value).unwrap_or(Value::String(value.into())),
            f::TIMESTAMP => value
                .parse::<u64>()
                .map_or(Value::String(value.clone().into()), Value::from),
            _ => Value::String(value.into_owned()),
        };
        out.insert(name.clone(), value);
    }
    Value::Object(out)
}
