"""Handlers and the client against the real daemon (`sagaflow run`) on the
test saga `order` (conftest.SAGAS): every outcome a client can wait for, an
operator's cancellation, and a handler process killed mid-command whose
command another instance takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis

import handler_apps
from sagaflow import AsyncClient, Client, StartRejected
from conftest import OPERATOR_KEY, WAIT, events_of, pending, spawn_handlers, wait_until


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    handler_apps.CALLS.clear()


def client_for(redis_server, **kwargs) -> Client:
    return Client(redis_server.url, operator_key=OPERATOR_KEY, accept_timeout=WAIT, **kwargs)


def test_a_saga_completes_and_its_id_is_the_daemons(redis_server, r, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))
    client = client_for(redis_server)
    handle = client.start("order", {"item": "lamp", "amount": 3}, correlation_id="order 42", stream="order:start")
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "completed" and outcome.ok
    assert outcome.results["reserve"]["item"] == "lamp"
    assert outcome.results["charge"] == {"charged": 3}
    # The id the client computed is the one the daemon gave the saga.
    started = [e for e in events_of(r, handle.saga_id) if e["event_type"] == "saga_started"]
    assert len(started) == 1 and started[0]["correlation_id"] == "order 42"
    kinds = [e["event_type"] for e in events_of(r, handle.saga_id)]
    assert kinds.count("step_progress") == 2, kinds
    # Status reads the record; waiting again answers from it.
    state = handle.status()
    assert state is not None and state.status == "completed" and state.ended and state.saga == "order"
    assert state.results == outcome.results and state.input == {"item": "lamp", "amount": 3}
    assert handle.wait(timeout=1).results == outcome.results
    assert handler_apps.CALLS == {"reserve": 1, "charge": 1}
    for stream, in [("shop:commands",), ("pay:commands",)]:
        assert pending(r, stream, "shop") == 0


def test_a_failed_step_is_compensated(redis_server, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))
    handle = client_for(redis_server).start("order", {"fail": "charge"}, stream="order:start")
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "compensated" and not outcome.ok
    assert outcome.failed_step == "charge" and "card declined" in (outcome.reason or "")
    assert outcome.compensated == ["reserve"]
    # The record says the same, its units named from the definition's steps.
    state = handle.status()
    assert state is not None and state.status == "compensated" and state.ended
    assert state.failed_step == "charge" and state.undone == ["reserve"] and state.ended_at_ms
    again = handle.wait(timeout=1)
    assert (again.status, again.failed_step, again.compensated) == ("compensated", "charge", ["reserve"])
    assert handler_apps.CALLS == {"reserve": 1, "charge": 1, "release": 1}


def test_a_failed_compensation_fails_the_saga(redis_server, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))
    client = client_for(redis_server)
    handle = client.start("order", {"fail": "charge", "fail_compensation": "reserve"}, stream="order:start")
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "failed" and outcome.failed_step == "charge"
    assert "the warehouse is closed" in str(outcome.payload)
    state = handle.status()
    assert state is not None and state.status == "failed" and state.failed_step == "charge"
    assert not state.abandoned and not state.parked


def test_rejected_starts(redis_server, daemon) -> None:
    client = client_for(redis_server)
    # Without a key, start does not wait; wait() tells of the rejection.
    outcome = client.start("no_such_saga", {}, stream="order:start").wait(timeout=WAIT)
    assert outcome.status == "rejected" and "no_such_saga" in (outcome.reason or "")
    # With a key, start waits for the daemon's answer.
    with pytest.raises(StartRejected) as e:
        client.start("order", {}, idempotency_key="bad key", stream="order:start")
    assert "idempotency_key" in e.value.reason


def test_a_duplicate_start_names_the_saga_holding_the_key(redis_server, r, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))
    client = client_for(redis_server)
    first = client.start("order", {"item": "a"}, idempotency_key="order-7", stream="order:start")
    second = client.start("order", {"item": "b"}, idempotency_key="order-7", stream="order:start")
    assert not first.duplicate and second.duplicate
    assert second.saga_id == first.saga_id != second.entry_id
    assert second.wait(timeout=WAIT).results["reserve"]["item"] == "a"
    assert handler_apps.CALLS["reserve"] == 1


def test_an_operator_cancels_a_running_saga(redis_server, r, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))
    client = client_for(redis_server)
    handle = client.start("order", {"slow": 3}, stream="order:start")
    wait_until("charge runs", lambda: handler_apps.CALLS["charge"] == 1)
    assert handle.status().status == "running"
    answer = handle.cancel("customer changed their mind")
    assert answer["verified"] is True and answer["by"] == "ops@test" and "refused" not in answer
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "cancelled", outcome
    assert outcome.reason == "cancelled by ops@test: customer changed their mind"
    assert outcome.compensated == ["charge", "reserve"]


def test_a_client_whose_socket_timeout_is_shorter_than_its_wait(redis_server, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.5)))
    short = redis.Redis.from_url(redis_server.url, socket_timeout=0.5, decode_responses=True)
    client = Client(short, accept_timeout=WAIT)
    started = time.monotonic()
    outcome = client.start("order", {"slow": 1.5}, stream="order:start", idempotency_key="k-1").wait(timeout=WAIT)
    assert outcome.status == "completed" and time.monotonic() - started >= 1.5


def test_the_async_client(redis_server, daemon, serve) -> None:
    serve(handler_apps.make_app(redis=redis_server.url))

    async def run() -> None:
        async with AsyncClient(redis_server.url, operator_key=OPERATOR_KEY, accept_timeout=WAIT) as client:
            handle = await client.start("order", {"item": "chair"}, idempotency_key="async-1", stream="order:start")
            outcome = await handle.wait(timeout=WAIT)
            assert outcome.results["reserve"]["item"] == "chair"
            assert (await handle.status()).status == "completed"
            again = await client.start("order", {}, idempotency_key="async-1", stream="order:start")
            assert again.duplicate and again.saga_id == handle.saga_id

    asyncio.run(run())


def test_a_killed_handler_process_leaves_its_command_to_another(redis_server, r, daemon, serve, tmp_path) -> None:
    log = tmp_path / "handlers.log"
    child = spawn_handlers(redis_server.url, "handler_apps", log, "--group", "shop", env={"HANG_ON": "reserve"})
    try:
        client = client_for(redis_server)
        handle = client.start("order", {"item": "desk"}, stream="order:start")
        wait_until(
            "the child reports progress",
            lambda: any(e["event_type"] == "step_progress" for e in events_of(r, handle.saga_id)),
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert pending(r, "shop:commands", "shop") == 1
    # Entries idle for reclaim_idle are taken over when an instance starts.
    time.sleep(0.3)
    serve(handler_apps.make_app(redis=redis_server.url, reclaim_idle=0.2))
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "completed", outcome
    assert handler_apps.CALLS == {"reserve": 1, "charge": 1}
    # The same attempt, answered by the instance that took it over.
    attempts = [e["payload"]["attempt"] for e in events_of(r, handle.saga_id) if e["event_type"] == "step_started"]
    assert attempts == [1, 1], attempts
    assert "took over" not in log.read_text()


def test_sigterm_finishes_the_command_in_hand(redis_server, r, daemon, tmp_path) -> None:
    log = tmp_path / "handlers.log"
    child = spawn_handlers(redis_server.url, "handler_apps:app", log, "--group", "shop", "--max-in-flight", "4")
    try:
        handle = client_for(redis_server).start("order", {"slow": 1.0}, stream="order:start")
        wait_until(
            "charge starts",
            lambda: any(e["event_type"] == "step_progress" and e["step"] == "charge" for e in events_of(r, handle.saga_id)),
        )
        os.kill(child.pid, signal.SIGTERM)
        assert child.wait(WAIT) == 0, log.read_text()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert handle.wait(timeout=WAIT).status == "completed"
    assert "stopped" in log.read_text()


def test_a_long_handler_lives_on_the_sdks_heartbeats(redis_server, r, daemon, serve) -> None:
    # `charge` has a heartbeat_timeout of 1 s and works 2.5 s, reporting
    # progress once: the SDK's heartbeats keep the attempt alive.
    serve(handler_apps.make_app(redis=redis_server.url))
    handle = client_for(redis_server).start("order", {"slow": 2.5}, stream="order:start")
    outcome = handle.wait(timeout=WAIT)
    assert outcome.status == "completed", outcome
    events = events_of(r, handle.saga_id)
    started = [e for e in events if e["event_type"] == "step_started" and e["step"] == "charge"]
    assert len(started) == 1 and started[0]["payload"]["heartbeat_timeout_ms"] == 1000
    replies = r.xrange(started[0]["payload"]["reply_stream"])
    beats = [f for _, f in replies if f.get("status") == "heartbeat" and f.get("saga_id") == handle.saga_id]
    assert len(beats) >= 3, replies
    assert not any(e["event_type"] == "step_timed_out" for e in events)


def test_a_killed_handler_is_noticed_by_its_heartbeat_clock(redis_server, r, daemon, tmp_path) -> None:
    log = tmp_path / "handlers.log"
    child = spawn_handlers(redis_server.url, "handler_apps", log, "--group", "shop")
    try:
        handle = client_for(redis_server).start("order", {"slow": 30}, stream="order:start")
        wait_until(
            "charge starts",
            lambda: any(e["event_type"] == "step_progress" and e["step"] == "charge" for e in events_of(r, handle.saga_id)),
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT)
        killed = time.monotonic()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    # Nobody answers any more: the heartbeat clock (1 s) ends the attempt
    # long before its 5 s timeout would have.
    timed_out = wait_until(
        "the heartbeat clock runs out",
        lambda: [e for e in events_of(r, handle.saga_id) if e["event_type"] == "step_timed_out"],
    )
    assert time.monotonic() - killed < 4.0
    assert timed_out[0]["step"] == "charge" and timed_out[0]["payload"]["timeout"] == "heartbeat"
