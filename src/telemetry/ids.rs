//! Spans whose ids are chosen, not drawn.
//!
//! A saga's spans have ids fixed before they start: the id of a step
//! attempt's span is the parent id of the `traceparent` its command carries,
//! and a saga resumed by another daemon must export its root span and its
//! interrupted attempt under the ids it was given first. The SDK's span
//! builder takes no ids, but it draws them from the provider's id generator
//! on the calling thread while the span is built: [`with_ids`] sets the ids
//! the next span built on this thread gets.

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use std::cell::Cell;

thread_local! {
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except where [`with_ids`] chose them.
#[derive(Debug, Default)]
pub struct ChosenIds(RandomIdGenerator);

impl IdGenerator for ChosenIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID.take().unwrap_or_else(|| self.0.new_span_id())
    }
}

/// Runs `build` (which builds one span) with the span's ids chosen: the
/// trace id applies when the span has no valid parent (with one, the span
/// joins its parent's trace).
pub fn with_ids<T>(trace_id: TraceId, span_id: SpanId, build: impl FnOnce() -> T) -> T {
    NEXT_TRACE_ID.set(Some(trace_id));
    NEXT_SPAN_ID.set(Some(span_id));
    let built = build();
    // Left unused when no provider is installed (the no-op tracer draws no
    // ids): never let them leak into another span.
    NEXT_TRACE_ID.set(None);
    NEXT_SPAN_ID.set(None);
    built
}
