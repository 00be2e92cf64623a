"""The exchange of single commands, written by hand to the command streams
as the daemon would write them (or as someone forging them would), and the
replies read straight from the reply streams."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Dict, List

import redis.asyncio

from sagaflow import App, Command, Context, Fatal, Retryable, SyncContext
from conftest import REPLAYED_STREAM, answer_twice, command, final_reply, pending, replies, wait_until

REPLIES = "saga:replies:node-1.0a1b2c3d"


def beats(app: App) -> App:
    @app.handler("hb:commands", "slow")
    async def slow(cmd: Command, ctx: Context) -> Dict[str, Any]:
        await asyncio.sleep(cmd.payload.get("seconds", 1.0))
        return {"done": True}

    @app.handler("hb:commands", "chatty")
    def chatty(cmd: Command, ctx: SyncContext) -> Dict[str, Any]:
        for i in range(12):
            ctx.progress(i * 8)
            time.sleep(0.05)
        return {"done": True}

    return app


def test_heartbeats_are_sent_while_a_command_that_asks_for_them_runs(redis_server, r, serve) -> None:
    serve(beats(App("hb", redis_server.url)))
    asked = command(REPLIES, "slow", "slow", {"seconds": 1.0}, heartbeat_timeout_ms="300")
    r.xadd("hb:commands", asked)
    final_reply(r, REPLIES, asked["request_id"])
    time.sleep(0.3)  # nothing after the final reply
    got = [f for f in replies(r, REPLIES) if f["request_id"] == asked["request_id"]]
    statuses = [f["status"] for f in got]
    assert statuses[0] == "start" and statuses[-1] == "completed", statuses
    heartbeats = [f for f in got if f["status"] == "heartbeat"]
    # Every 300 / 3 = 100 ms for about a second.
    assert 6 <= len(heartbeats) <= 11, statuses
    assert statuses[1:-1] == ["heartbeat"] * len(heartbeats)
    stamps = [int(f["timestamp"]) for f in heartbeats]
    assert all(b - a >= 80 for a, b in zip(stamps, stamps[1:])), stamps
    for beat in heartbeats:
        for name in ("correlation_id", "saga_id", "request_id"):
            assert beat[name] == asked[name]
        assert beat["traceparent"] == got[0]["traceparent"]
        assert beat["parent_span_id"] == beat["traceparent"].split("-")[2]

    # Without the field: no heartbeat at all.
    plain = command(REPLIES, "slow", "slow", {"seconds": 0.5})
    r.xadd("hb:commands", plain)
    final_reply(r, REPLIES, plain["request_id"])
    got = [f["status"] for f in replies(r, REPLIES) if f["request_id"] == plain["request_id"]]
    assert got == ["start", "completed"], got


def test_progress_within_the_interval_replaces_heartbeats(redis_server, r, serve) -> None:
    serve(beats(App("hb", redis_server.url)))
    asked = command(REPLIES, "chatty", "chatty", heartbeat_timeout_ms="600")
    r.xadd("hb:commands", asked)
    final_reply(r, REPLIES, asked["request_id"])
    statuses = [f["status"] for f in replies(r, REPLIES) if f["request_id"] == asked["request_id"]]
    assert "heartbeat" not in statuses, statuses
    assert statuses.count("progress") == 12 and statuses[-1] == "completed"


def test_forged_reply_streams_are_dead_lettered_without_a_write(redis_server, r, serve) -> None:
    r.zadd("saga:{leases}", {"owner-1": 4102444800000})
    app = App("forged", redis_server.url)

    @app.handler("resources:commands", "allocate_resources")
    async def allocate(cmd: Command, ctx: Context) -> Dict[str, Any]:
        return {"robot_ids": ["robot-1"]}

    serve(app)
    forged = ["mission:start", "saga:{leases}", "saga:replies:node 1.0a1b2c3d", "acme:replies:n.e"]
    for stream in forged:
        r.xadd("resources:commands", command(stream, "allocate_resources", "allocate_resources"))
    r.xadd("resources:commands", {"only": "junk"})
    valid = command(REPLIES, "allocate_resources", "allocate_resources")
    r.xadd("resources:commands", valid)
    assert final_reply(r, REPLIES)["status"] == "completed"
    wait_until("all acknowledged", lambda: pending(r, "resources:commands", "forged") == 0)
    assert r.xlen("mission:start") == 0 and r.zrange("saga:{leases}", 0, -1) == ["owner-1"]
    # Handled at once, so dead-lettered in any order.
    dead = sorted(replies(r, "handler:{forged}:dead-letter"), key=lambda d: [int(n) for n in d["entry_id"].split("-")])
    assert [d.get("command.reply_stream") for d in dead[:4]] == forged
    for d in dead[:4]:
        assert "reply_stream" in d["reason"] and d["stream"] == "resources:commands"
        assert d["consumer"] == app.consumer and d["field_count"] == "13" and d["truncated"] == "false"
    assert "malformed command" in dead[4]["reason"] and dead[4]["command.only"] == "junk"
    assert (app.stats.refused, app.stats.malformed, app.stats.dead_lettered) == (4, 1, 5)


def test_a_request_answered_before_is_replayed_from_its_record(redis_server, r, serve) -> None:
    first, answered, replayed, runs = answer_twice(r, redis_server.url, serve, REPLIES)
    again = {"reply_stream": REPLAYED_STREAM}
    assert runs == [first["request_id"]]
    assert [f["status"] for f in replies(r, REPLIES)] == ["start", "progress", "completed"]
    assert [f["status"] for f in replies(r, again["reply_stream"])] == ["start", "completed"]
    assert replayed["result"] == answered["result"] == '{"reservation":1}'
    assert replayed["traceparent"] == answered["traceparent"]
    record = r.get(f"handler:{{dedupe}}:done:{first['request_id']}")
    assert record is not None and 86_000 < r.ttl(f"handler:{{dedupe}}:done:{first['request_id']}") <= 86_400


def test_a_record_in_the_rust_sdks_form_is_replayed(redis_server, r, serve) -> None:
    app = App("both", redis_server.url)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> Dict[str, Any]:
        raise AssertionError("answered by the record")

    asked = command(REPLIES)
    # As the Rust SDK records it: serde_json's sorted, compact object of text.
    record = (
        '{"correlation_id":"test","event_type":"reserve","parent_span_id":"00f067aa0ba902b7",'
        f'"request_id":"{asked["request_id"]}","result":"{{\\"from\\":\\"rust\\"}}","saga_id":"{asked["saga_id"]}",'
        '"status":"completed","timestamp":"1700000000000",'
        '"traceparent":"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"}'
    )
    r.set(f"handler:{{both}}:done:{asked['request_id']}", record)
    serve(app)
    r.xadd("shop:commands", asked)
    reply = final_reply(r, REPLIES)
    assert reply["result"] == '{"from":"rust"}' and reply["timestamp"] == "1700000000000"


def test_failures_limits_and_deadlines(redis_server, r, serve) -> None:
    app = App("limits", redis_server.url)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> Any:
        what = cmd.payload["do"]
        if what == "retry":
            raise Retryable("try later")
        if what == "fatal":
            raise Fatal("é" * 5000)
        if what == "bug":
            return {}["missing"]
        if what == "huge":
            return "x" * (2 << 20)
        return "ok"

    serve(app)

    def answer(do: str, **extra: Any) -> Dict[str, str]:
        asked = command(REPLIES, payload={"do": do}, **extra)
        r.xadd("shop:commands", asked)
        return final_reply(r, REPLIES, asked["request_id"])

    retry = answer("retry")
    assert (retry["status"], retry["error"], retry["retryable"]) == ("failed", "try later", "true")
    fatal = answer("fatal")
    assert fatal["retryable"] == "false" and len(fatal["error"].encode()) <= 4096
    assert fatal["error"].endswith("[cut: 10000 bytes in all]")
    bug = answer("bug")
    assert bug["retryable"] == "true" and bug["error"].startswith("KeyError")
    huge = answer("huge")
    assert huge["retryable"] == "false" and "over the limit of 1048576 bytes" in huge["error"]
    # Past its deadline on Redis's clock: acknowledged, never answered.
    late = command(REPLIES, payload={"do": "ok"}, deadline_ms=str(int(time.time() * 1000) - 1000))
    r.xadd("shop:commands", late)
    wait_until("acknowledged", lambda: pending(r, "shop:commands", "limits") == 0 and r.xlen("shop:commands") == 5)
    time.sleep(0.2)
    assert not [f for f in replies(r, REPLIES) if f["request_id"] == late["request_id"]]


def test_commands_sent_before_the_first_start_are_handled_and_others_ignored(redis_server, r, serve) -> None:
    ours = command(REPLIES)
    r.xadd("shop:commands", command(REPLIES, "not_ours", "not_ours"))
    r.xadd("shop:commands", ours)
    app = App("early", redis_server.url)

    @app.handler("shop:commands", "reserve")
    def reserve(cmd: Command, ctx: SyncContext) -> str:
        return "early"

    serve(app)
    assert final_reply(r, REPLIES)["request_id"] == ours["request_id"]
    wait_until("both acknowledged", lambda: pending(r, "shop:commands", "early") == 0)
    assert len(replies(r, REPLIES)) == 2  # start, completed
    assert not r.exists("handler:{early}:dead-letter")


def test_a_client_whose_socket_timeout_is_shorter_than_a_blocking_read(redis_server, r, serve, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sagaflow")
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=0.3, decode_responses=True)
    app = App("short", client)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> str:
        return "fine"

    serve(app)
    time.sleep(2.5)  # several reads of 1 s find nothing
    asked = command(REPLIES)
    r.xadd("shop:commands", asked)
    assert final_reply(r, REPLIES)["status"] == "completed"
    wait_until("acknowledged", lambda: pending(r, "shop:commands", "short") == 0)
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text


def test_a_redis_restart_is_ridden_out_and_the_group_made_again(redis_server, r, serve) -> None:
    # Redis crashes and comes back empty: the app reconnects, finds its
    # consumer group gone (NOGROUP), makes it again and answers.
    app = App("phoenix", redis_server.url)

    @app.handler("phoenix:commands", "rise")
    async def rise(cmd: Command, ctx: Context) -> Dict[str, Any]:
        return {"risen": cmd.payload.get("n")}

    serve(app)
    first = command(REPLIES, "rise", "rise", {"n": 1})
    r.xadd("phoenix:commands", first)
    assert final_reply(r, REPLIES, first["request_id"])["status"] == "completed"
    redis_server.restart()
    again = redis_server.client(decode_responses=True)
    second = command(REPLIES, "rise", "rise", {"n": 2})
    # Whether the app makes its group before or after this write, it reads
    # the stream from 0: the command is answered either way.
    again.xadd("phoenix:commands", second)
    reply = final_reply(again, REPLIES, second["request_id"])
    assert reply["status"] == "completed" and json.loads(reply["result"]) == {"risen": 2}
