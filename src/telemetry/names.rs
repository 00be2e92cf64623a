//! Attribute and metric names, in one place: dashboards, TraceQL queries and
//! alerts depend on them.

/// Span attributes of sagas and their commands.
pub mod attr {
    pub const SAGA_NAME: &str = "saga.name";
    pub const SAGA_ID: &str = "saga.id";
    pub const CORRELATION_ID: &str = "saga.correlation_id";
    pub const DEFINITION_VERSION: &str = "saga.definition_version";
    pub const OUTCOME: &str = "saga.outcome";
    pub const STEP: &str = "saga.step";
    /// The branch of a fan-out step an attempt belongs to.
    pub const BRANCH: &str = "saga.branch";
    pub const ATTEMPT: &str = "saga.attempt";
    /// `action` or `compensation`.
    pub const KIND: &str = "saga.command.kind";
    pub const COMMAND: &str = "saga.command.name";
    pub const REQUEST_ID: &str = "saga.request_id";
    pub const PROGRESS: &str = "saga.progress";
    /// The semantic lock a `lock` span waited for.
    pub const LOCK: &str = "saga.lock";
    /// The signal a `wait` span waited for.
    pub const SIGNAL: &str = "saga.signal";
    /// Who paused or resumed a saga, and why (a `pause` span).
    pub const OPERATOR: &str = "saga.operator";
    pub const REASON: &str = "saga.reason";
    // OpenTelemetry's messaging conventions.
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    pub const MESSAGING_DESTINATION: &str = "messaging.destination.name";
    pub const MESSAGING_OPERATION: &str = "messaging.operation";
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    pub const MESSAGING_CONSUMER_GROUP: &str = "messaging.consumer.group.name";
    /// `messaging.system` of every stream: Redis Streams.
    pub const REDIS: &str = "redis";
}

/// Prometheus metrics.
pub mod metric {
    pub const SAGAS_STARTED: &str = "sagaflow_sagas_started_total";
    pub const SAGAS_ENDED: &str = "sagaflow_sagas_ended_total";
    pub const SAGAS_REJECTED: &str = "sagaflow_sagas_rejected_total";
    pub const SAGAS_DUPLICATE: &str = "sagaflow_sagas_duplicate_total";
    pub const SAGAS_IN_FLIGHT: &str = "sagaflow_sagas_in_flight";
    pub const SAGA_DURATION: &str = "sagaflow_saga_duration_seconds";
    pub const STEP_DURATION: &str = "sagaflow_step_duration_seconds";
    pub const STEP_RETRIES: &str = "sagaflow_step_retries_total";
    pub const STEP_TIMEOUTS: &str = "sagaflow_step_timeouts_total";
    pub const STREAM_PENDING: &str = "sagaflow_stream_pending_entries";
    pub const REDIS_ERRORS: &str = "sagaflow_redis_errors_total";
    pub const REDIS_RECONNECTS: &str = "sagaflow_redis_reconnects_total";
    pub const DEAD_LETTERED: &str = "sagaflow_dead_lettered_total";
    pub const LEASES_LOST: &str = "sagaflow_leases_lost_total";
    pub const OPERATOR_REFUSED: &str = "sagaflow_operator_requests_refused_total";
    pub const OPERATOR_ACTIONS: &str = "sagaflow_operator_actions_total";
    pub const LOCK_WAIT: &str = "sagaflow_lock_wait_seconds";
    pub const SIGNALS: &str = "sagaflow_signals_total";
    pub const READY: &str = "sagaflow_ready";
}
