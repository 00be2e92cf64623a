//! The span of a handled command: a child of the command's `traceparent`,
//! under the id that the handler's replies carry in theirs, so that the
//! daemon's attempt span, the handler's span and whatever the handler's own
//! code traces with `tracing` make one tree.

use super::ids::with_ids;
use crate::protocol::{self, Command};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` span to handle `command` in; `own` is the traceparent of
/// the handler's replies. Exported over OTLP when the process exports
/// spans; its fields are on every log line written inside it either way.
pub fn command_span(
    command: &Command,
    stream: &str,
    group: &str,
    own: &protocol::TraceParent,
) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", command.event_type),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "redis",
        messaging.destination.name = %stream,
        messaging.operation = "process",
        "messaging.operation.type" = "process",
        messaging.consumer.group.name = %group,
        messaging.message.id = %command.request_id,
        saga.id = %command.saga_id,
        saga.step = %command.step,
        saga.command.name = %command.event_type,
        saga.command.kind = command.kind.as_str(),
        saga.attempt = command.attempt,
        saga.request_id = %command.request_id,
        saga.correlation_id = command.correlation_id.as_str(),
        trace_id = %command.traceparent.trace_id,
    );
    let (Some(trace_id), Some(parent), Some(own_id)) = (
        trace_id(&command.traceparent.trace_id),
        span_id(&command.traceparent.span_id),
        span_id(&own.span_id),
    ) else {
        return span;
    };
    let parent = Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        parent,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    if span.set_parent(parent).is_ok() {
        // Starts the OpenTelemetry span now, under the chosen id.
        with_ids(trace_id, own_id, || span.context());
    }
    span
}

/// Marks the current command's span as failed.
pub fn failed(error: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "error");
    span.record("otel.status_description", error);
}

fn trace_id(id: &protocol::TraceId) -> Option<opentelemetry::trace::TraceId> {
    opentelemetry::trace::TraceId::from_hex(id.as_str()).ok()
}

fn span_id(id: &protocol::SpanId) -> Option<opentelemetry::trace::SpanId> {
    opentelemetry::trace::SpanId::from_hex(id.as_str()).ok()
}
