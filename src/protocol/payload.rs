//! The `payload` of each audit event on `saga:events`, one type per event
//! (or per pair of action and compensation events, which carry the same
//! fields). `docs/protocol.md` lists them; fields marked optional are left
//! out when absent. A branch of a fan-out is named by the event's own
//! `branch` field, not here.

use super::{CommandKind, RequestId, SpanId, TraceId, UnixMillis};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `saga_started`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaStarted {
    pub input: Value,
    pub trace_id: TraceId,
}

/// `step_started` and `compensation_started`: an attempt was sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptStarted {
    pub attempt: u32,
    pub request_id: RequestId,
    pub kind: CommandKind,
    pub command: String,
    pub stream: String,
    pub reply_stream: String,
    pub span_id: SpanId,
    pub deadline_ms: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// A branch's element of its fan-out's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
}

/// `step_started` of a fan-out step, before any of its branches: how many
/// branches it has, and how many run at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FanOutStarted {
    pub branches: usize,
    pub max_concurrency: usize,
}

/// `step_progress` and `compensation_progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub attempt: u32,
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `step_completed` and `compensation_completed` of an attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptCompleted {
    pub attempt: u32,
    pub result: Value,
}

/// `step_completed` of a fan-out step once all its branches completed:
/// their results, in the order of the list's elements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FanOutCompleted {
    pub branches: usize,
    pub result: Value,
}

/// `step_failed` and `compensation_failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptFailed {
    pub attempt: u32,
    pub error: String,
    pub retryable: bool,
    /// Absent when the step failed before a command could be sent (its
    /// input or its list could not be built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

/// `step_timed_out` and `compensation_timed_out`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptTimedOut {
    pub attempt: u32,
    pub request_id: RequestId,
    /// The clock that ran out: `ack`, `heartbeat` or `completion`.
    pub timeout: String,
}

/// `step_retrying` and `compensation_retrying`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retrying {
    /// The attempt to come.
    pub attempt: u32,
    pub delay_ms: u64,
}

/// `saga_completed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaCompleted {
    pub results: Map<String, Value>,
}

/// `saga_compensated`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaCompensated {
    pub failed_step: String,
    pub reason: String,
    /// What was undone, in the order undone: step names, a branch as
    /// `<step>[<branch>]`.
    pub compensated: Vec<String>,
    /// What needed no undoing, or was marked undone by hand.
    pub skipped: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

/// `saga_failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaFailed {
    pub failed_step: String,
    pub reason: String,
    /// The step (or branch) whose compensation failed for good; when
    /// several did, the first in the order they would be retried.
    pub compensation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_command: Option<String>,
    pub error: String,
    pub compensated: Vec<String>,
    /// Every compensation that failed for good, when more than one did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<String>,
    /// Set when the saga was set aside because a transition of it could
    /// never be written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

/// `operator_action`: an operator's request, accepted or refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorAction {
    pub action: String,
    pub by: String,
    pub reason: String,
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// For a `resume`: how long the saga was paused, and who paused it,
    /// why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
}

/// `lock_waiting`: the step waits for `lock`, which `holder` holds;
/// `ahead` sagas are before it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockWaiting {
    pub lock: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    pub ahead: usize,
    pub timeout_ms: u64,
}

/// `lock_acquired`: the step holds `lock`, after waiting `waited_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockAcquired {
    pub lock: String,
    pub waited_ms: u64,
}

/// `locks_released`: the saga let go of these locks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocksReleased {
    pub locks: Vec<String>,
}

/// `step_started` of a `wait` step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitStarted {
    pub signal: String,
    pub deadline_ms: u64,
}

/// `step_completed` of a `wait` step: the signal it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalTaken {
    pub signal: String,
    pub signal_id: String,
    /// From the wait's start to the signal taken.
    pub waited_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub result: Value,
}

/// `signal_received` / `signal_rejected`: what became of the entry
/// `entry_id` of the signals stream (a rejected entry's fields as far as
/// they read, cut to 128 characters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalNote {
    pub signal: String,
    pub signal_id: String,
    #[serde(default)]
    pub entry_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}
