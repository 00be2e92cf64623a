"""The span of a handled command: a child of the command's ``traceparent``,
made with opentelemetry-api when it is installed (``pip install
sagaflow[otel]``) and a tracer provider is set, so that the daemon's attempt
span, the handler's span and whatever the handler's own code traces make one
tree. Without it, replies still carry a span id of their own in the command's
trace.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from ._protocol import Command, TraceParent

try:  # pragma: no cover - depends on what is installed
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode
except ImportError:  # pragma: no cover
    _trace = None  # type: ignore[assignment]


class CommandSpan:
    """The handler's span for one command; ``own`` is the traceparent its
    replies carry."""

    def __init__(self, command: Command, group: str) -> None:
        parent = command.parent
        self.span: Any = None
        span_id: Optional[str] = None
        if _trace is not None:
            remote = SpanContext(
                trace_id=int(parent.trace_id, 16),
                span_id=int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED if parent.sampled else TraceFlags.DEFAULT),
            )
            context = _trace.set_span_in_context(NonRecordingSpan(remote))
            self.span = _trace.get_tracer("sagaflow").start_span(
                f"process {command.event_type}",
                context=context,
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "redis",
                    "messaging.destination.name": command.stream,
                    "messaging.operation": "process",
                    "messaging.operation.type": "process",
                    "messaging.consumer.group.name": group,
                    "messaging.message.id": command.request_id,
                    "saga.id": command.saga_id,
                    "saga.step": command.step,
                    "saga.command.name": command.event_type,
                    "saga.command.kind": command.kind,
                    "saga.attempt": command.attempt,
                    "saga.request_id": command.request_id,
                    "saga.correlation_id": command.correlation_id,
                },
            )
            own = self.span.get_span_context()
            if own.is_valid and format(own.trace_id, "032x") == parent.trace_id:
                span_id = format(own.span_id, "016x")
        self.own: TraceParent = parent.child(span_id)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Makes the span the current one, for the handler's own spans."""
        if self.span is None:
            yield
            return
        with _trace.use_span(self.span, end_on_exit=False):
            yield

    def failed(self, error: str) -> None:
        if self.span is not None:
            self.span.set_status(Status(StatusCode.ERROR, error))

    def end(self) -> None:
        if self.span is not None:
            self.span.end()
