"""With opentelemetry installed and a tracer provider set, each command is
handled in a span that is a child of the command's `traceparent`, under the
span id its replies carry."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from sagaflow import App, Command, Context
from conftest import command, final_reply, replies

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

REPLIES = "saga:replies:node-1.0a1b2c3d"


def test_a_command_is_handled_in_a_child_span_of_its_traceparent(redis_server, r, serve) -> None:
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another tracer provider is set in this process")
    app = App("traced", redis_server.url)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> Dict[str, Any]:
        with trace.get_tracer("test").start_as_current_span("inner"):
            return {"ok": True}

    serve(app)
    asked = command(REPLIES)
    r.xadd("shop:commands", asked)
    reply = final_reply(r, REPLIES)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    handled, inner = spans["process reserve"], spans["inner"]
    _, trace_id, span_id, _ = reply["traceparent"].split("-")
    assert format(handled.context.trace_id, "032x") == trace_id == asked["traceparent"].split("-")[1]
    assert format(handled.context.span_id, "016x") == span_id == reply["parent_span_id"]
    assert format(handled.parent.span_id, "016x") == asked["parent_span_id"]
    assert inner.parent.span_id == handled.context.span_id
    assert handled.attributes["saga.request_id"] == asked["request_id"]
    assert all(f["traceparent"] == reply["traceparent"] for f in replies(r, REPLIES))
