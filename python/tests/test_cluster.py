"""The package on a Redis Cluster of three masters (conftest.RedisCluster):
a saga started with the client, handled by an app and driven by the daemon,
each given a different node; a redelivered command answered from its record;
a command given up on dead-lettered; and how the mode is decided."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Dict, List

import pytest
import redis
from redis import exceptions as rex
from redis.cluster import RedisCluster as Cluster

import handler_apps
from sagaflow import App, AsyncClient, Client, Command, Context
from sagaflow._keys import slot
from sagaflow._redis import is_cluster, run_blocking
from conftest import REPLAYED_STREAM, answer_twice, OPERATOR_KEY, WAIT, Daemon, command, final_reply, pending, replies, spawn_handlers, wait_until

REPLIES = "saga:replies:node-1.0a1b2c3d"


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    handler_apps.CALLS.clear()


def test_a_saga_completes_on_a_cluster(redis_cluster, tmp_path: Path, serve) -> None:
    daemon = Daemon(redis_cluster.url(0), tmp_path, "py-cluster")
    try:
        app = handler_apps.make_app(redis=redis_cluster.url(1))
        serve(app)
        client = Client(redis_cluster.url(2), operator_key=OPERATOR_KEY, accept_timeout=WAIT)
        assert isinstance(client.redis, Cluster)
        handle = client.start("order", {"item": "lamp", "amount": 3}, correlation_id="order 7", stream="order:start")
        outcome = handle.wait(timeout=WAIT)
        assert outcome.status == "completed", outcome
        assert outcome.results["reserve"]["item"] == "lamp" and outcome.results["charge"] == {"charged": 3}
        assert app.cluster
        # The record, found on whichever master holds its slot.
        state = handle.status()
        assert state is not None and state.status == "completed" and state.input == {"item": "lamp", "amount": 3}
        assert handler_apps.CALLS == {"reserve": 1, "charge": 1}
        r = redis_cluster.client()
        for stream in ("shop:commands", "pay:commands"):
            assert pending(r, stream, "shop") == 0

        async def status_async() -> Any:
            async with AsyncClient(redis_cluster.url(1), accept_timeout=WAIT) as aclient:
                found = await aclient.handle(handle.saga_id).status()
                return found, type(aclient.redis).__module__
        found, module = asyncio.run(status_async())
        assert found is not None and found.status == "completed" and module == "redis.asyncio.cluster"
        assert "ERROR" not in daemon.stderr(), daemon.stderr()
    finally:
        daemon.kill()


def test_a_redelivered_command_is_answered_from_its_record(redis_cluster, serve) -> None:
    r = redis_cluster.client()
    key_slots = {slot("shop:commands"), slot(REPLIES), slot("handler:{dedupe}:done:x")}
    assert len(key_slots) == 3, "the test's keys are meant to be in three slots"
    first, answered, replayed, runs = answer_twice(r, redis_cluster.url(1), serve, REPLIES)
    again = {"reply_stream": REPLAYED_STREAM}
    assert runs == [first["request_id"]]
    assert [f["status"] for f in replies(r, REPLIES)] == ["start", "progress", "completed"]
    assert [f["status"] for f in replies(r, again["reply_stream"])] == ["start", "completed"]
    assert replayed["result"] == answered["result"] == '{"reservation":1}'
    done = f"handler:{{dedupe}}:done:{first['request_id']}"
    assert r.get(done) is not None and 86_000 < r.ttl(done) <= 86_400


def test_a_forged_command_is_dead_lettered_on_a_cluster(redis_cluster, serve) -> None:
    r = redis_cluster.client()
    app = App("forged", redis_cluster.url(0), redis_mode="cluster")

    @app.handler("resources:commands", "allocate_resources")
    async def allocate(cmd: Command, ctx: Context) -> Dict[str, Any]:
        return {}

    serve(app)
    r.xadd("resources:commands", command("mission:start", "allocate_resources", "allocate_resources"))
    wait_until("dead-lettered", lambda: replies(r, "handler:{forged}:dead-letter"))
    wait_until("acknowledged", lambda: pending(r, "resources:commands", "forged") == 0)
    assert r.xlen("mission:start") == 0 and app.stats.dead_lettered == 1


def test_python_m_sagaflow_run_takes_the_mode_from_its_environment(redis_cluster, tmp_path: Path) -> None:
    r = redis_cluster.client()
    log = tmp_path / "handlers.log"
    child = spawn_handlers(redis_cluster.url(2), "handler_apps", log, "--group", "shop", env={"SAGAFLOW_REDIS_MODE": "cluster"})
    try:
        sent = command(REPLIES, payload={"input": {"item": "desk"}})
        r.xadd("shop:commands", sent)
        assert final_reply(r, REPLIES)["status"] == "completed", log.read_text()
        wait_until("acknowledged", lambda: pending(r, "shop:commands", "shop") == 0)
        assert r.get(f"handler:{{shop}}:done:{sent['request_id']}") is not None
    finally:
        child.kill()
        child.wait()


def test_the_mode_is_asked_once_and_forced_by_the_setting(redis_server) -> None:
    assert isinstance(Client(redis_server.url).redis, redis.Redis)
    assert isinstance(Client(redis_server.url, redis_mode="single").redis, redis.Redis)
    with pytest.raises(ValueError):
        Client(redis_server.url, redis_mode="sharded")
    with pytest.raises(ValueError):
        App("g", redis_server.url, redis_mode="sharded")

    def refusing(message: str, cls: type = rex.ResponseError) -> Any:
        def ask() -> None:
            raise cls(message)
        return ask

    assert not run_blocking(is_cluster("auto", refusing("ERR This instance has cluster support disabled")))
    assert not run_blocking(is_cluster("auto", refusing("NOPERM this user has no permissions to run the 'cluster|info' command")))
    assert not run_blocking(is_cluster("auto", refusing("no permissions", rex.NoPermissionError)))
    assert run_blocking(is_cluster("auto", lambda: "cluster_state:ok"))
    assert run_blocking(is_cluster("cluster", refusing("never asked")))
    assert not run_blocking(is_cluster("single", refusing("never asked")))
    with pytest.raises(rex.ResponseError):
        run_blocking(is_cluster("auto", refusing("ERR unknown command")))
