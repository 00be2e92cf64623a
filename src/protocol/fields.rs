//! Field names of stream entries, one constant each, so that no string
//! literal for a wire name appears anywhere else.

pub const CORRELATION_ID: &str = "correlation_id";
pub const SAGA_ID: &str = "saga_id";
pub const REQUEST_ID: &str = "request_id";
pub const TRACEPARENT: &str = "traceparent";
pub const PARENT_SPAN_ID: &str = "parent_span_id";
pub const EVENT_TYPE: &str = "event_type";
pub const STEP: &str = "step";
/// On commands and on `saga:events`: the branch of a fan-out step a
/// command or an event is about (its position in the step's list).
pub const BRANCH: &str = "branch";
pub const KIND: &str = "kind";
pub const ATTEMPT: &str = "attempt";
pub const REPLY_STREAM: &str = "reply_stream";
pub const PAYLOAD: &str = "payload";
pub const DEADLINE_MS: &str = "deadline_ms";
pub const TIMESTAMP: &str = "timestamp";
pub const ACK_TIMEOUT_MS: &str = "ack_timeout_ms";
pub const HEARTBEAT_TIMEOUT_MS: &str = "heartbeat_timeout_ms";
pub const STATUS: &str = "status";
pub const PROGRESS: &str = "progress";
pub const RESULT: &str = "result";
pub const ERROR: &str = "error";
pub const RETRYABLE: &str = "retryable";
pub const SAGA: &str = "saga";
pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
