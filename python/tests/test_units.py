"""The pure parts: reply stream names, commands, replies and their bounds,
dead-letter copies, ids and signatures."""

from __future__ import annotations

import json

import pytest

from sagaflow import OperatorKey, saga_id_for_start
from sagaflow.client import SagaState, step_names
from sagaflow._dead_letter import MAX_COPIED_FIELDS, MAX_COPY_BYTES, MAX_REASON_BYTES, MAX_VALUE_BYTES, dead_letter_key, done_key, entry
from sagaflow._keys import PARTITIONS, hash_tag, partition_of, partition_tag, record_key, slot
from sagaflow._protocol import (
    Command,
    MalformedCommand,
    TraceParent,
    completed_fields,
    failed_fields,
    parse_record,
    record_json,
    truncate_text,
)
from sagaflow._redis import is_permanent
from sagaflow._reply_stream import check_prefix, refusal
from conftest import command

RID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def check(stream: str, prefix: str = "saga:replies:") -> object:
    return refusal(prefix, stream, RID)


def test_the_daemons_reply_streams_are_accepted() -> None:
    assert check("saga:replies:0a1b2c3d4e5f.9f8e7d6c") is None
    assert check(f"saga:replies:node-1.9f8e7d6c:{RID}") is None
    assert check("saga:replies:eu:node.1.9f8e7d6c") is None
    assert check("acme:replies/n.e", "acme:replies/") is None
    assert "prefix" in check("saga:replies:n.e", "acme:replies/")


@pytest.mark.parametrize(
    "stream, why",
    [
        ("saga:{leases}", "prefix"),
        ("mission:start", "prefix"),
        ("", "prefix"),
        ("saga:replies", "prefix"),
        ("saga:replies:", "nothing after"),
        ("saga:replies:node", "form"),
        ("saga:replies:.e", "form"),
        ("saga:replies:n.", "form"),
        ("saga:replies:n.e:x", "form"),
        (f"saga:replies:n.e:{RID}:", "form"),
        (f"saga:replies:n.e:{OTHER}", "not this command's"),
        ("saga:replies:n 1.e", "whitespace"),
        ("saga:replies:n.e\n", "whitespace"),
        ("saga:replies:n.\x7fe", "control"),
        ("saga:replies:n.\xa0e", "whitespace"),
        ("saga:replies:n." + "e" * 256, "over the limit of 256"),
    ],
)
def test_anything_else_is_refused(stream: str, why: str) -> None:
    reason = check(stream)
    assert reason is not None and why in reason, reason


def test_the_longest_name_passes_and_prefixes_are_checked() -> None:
    longest = "saga:replies:n." + "e" * (256 - 15)
    assert len(longest) == 256 and check(longest) is None
    for bad in ("", "saga replies:", "p" * 129):
        with pytest.raises(ValueError):
            check_prefix(bad)


def raw(fields: dict) -> dict:
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()}


def test_a_command_is_read_and_written_back() -> None:
    fields = command("saga:replies:n.e", payload={"area": "hall-a"}, heartbeat_timeout_ms="300")
    cmd = Command.from_fields(raw(fields), "shop:commands", "1-0")
    assert cmd.payload == {"area": "hall-a"} and cmd.attempt == 1 and cmd.heartbeat_timeout_ms == 300
    assert cmd.ack_timeout_ms is None and cmd.stream == "shop:commands" and cmd.entry_id == "1-0"
    back = cmd.to_fields()
    assert {k: v for k, v in back.items() if k != "payload"} == {k: v for k, v in fields.items() if k != "payload"}


@pytest.mark.parametrize(
    "change, why",
    [
        ({"reply_stream": None}, "field `reply_stream` is missing"),
        ({"saga_id": "ABC"}, "saga_id"),
        ({"kind": "other"}, "kind"),
        ({"attempt": "-1"}, "attempt"),
        ({"attempt": str(1 << 32)}, "attempt"),
        ({"traceparent": "00-x"}, "traceparent"),
        ({"payload": "{"}, "payload"),
        ({"payload": "[" * 200 + "]" * 200}, "127 levels"),
        ({"payload": "[" * 100_000}, "127 levels"),
        ({"event_type": "n" * 129}, "over the limit of 128"),
        ({"reply_stream": "n" * 513}, "over the limit of 512"),
        ({"correlation_id": "a\tb"}, "tab"),
        ({"heartbeat_timeout_ms": "soon"}, "heartbeat_timeout_ms"),
        ({"payload": "x" * (16 << 20)}, "over the limit of 16777216 bytes"),
    ],
)
def test_a_malformed_command_is_named(change: dict, why: str) -> None:
    fields = command("saga:replies:n.e")
    for k, v in change.items():
        if v is None:
            fields.pop(k)
        else:
            fields[k] = v
    with pytest.raises(MalformedCommand) as e:
        Command.from_fields(raw(fields))
    assert why in str(e.value) and len(str(e.value).encode()) <= 256


def test_a_value_that_is_not_utf8_is_malformed() -> None:
    fields = raw(command("saga:replies:n.e"))
    fields[b"step"] = b"\xff\xfe"
    with pytest.raises(MalformedCommand, match="not UTF-8"):
        Command.from_fields(fields)


def sample() -> Command:
    return Command.from_fields(raw(command("saga:replies:n.e")))


def test_replies_never_exceed_what_the_daemon_reads() -> None:
    cmd = sample()
    own = cmd.parent.child()
    error = dict(failed_fields(cmd, own, 1, "é" * 5000, False))
    assert len(error["error"].encode()) <= 4096 and error["error"].endswith("[cut: 10000 bytes in all]")
    assert error["retryable"] == "false"
    big = dict(completed_fields(cmd, own, 1, {"blob": "x" * (1 << 20)}))
    assert big["status"] == "failed" and big["retryable"] == "false"
    assert "over the limit of 1048576 bytes" in big["error"] and "result" not in big
    nan = dict(completed_fields(cmd, own, 1, float("nan")))
    assert nan["status"] == "failed" and "not JSON" in nan["error"]
    ok = dict(completed_fields(cmd, own, 7, {"a": [1, "é"]}))
    assert ok["result"] == '{"a":[1,"é"]}' and ok["timestamp"] == "7"
    assert ok["traceparent"].split("-")[1] == cmd.parent.trace_id
    assert ok["parent_span_id"] == own.span_id != cmd.parent.span_id


def test_the_record_has_the_rust_sdks_form() -> None:
    fields = [("status", "completed"), ("result", '{"a":1}'), ("correlation_id", "c")]
    text = record_json(fields)
    assert text == '{"correlation_id":"c","result":"{\\"a\\":1}","status":"completed"}'
    assert parse_record(text) == sorted(fields)
    assert parse_record(b'{"a": 1}') is None and parse_record("nope") is None
    assert done_key("g", RID) == f"handler:{{g}}:done:{RID}"
    assert dead_letter_key("g") == "handler:{g}:dead-letter"


def test_a_huge_forged_command_is_copied_within_bounds() -> None:
    fields = {b"request_id": b"abc", b"payload": ("é" * (1 << 20)).encode(), b"bytes": b"\xff\xfe"}
    for i in range(1000):
        fields[f"junk{i:04}{'n' * 200}".encode()] = b"v"
    copy = entry("s", "1-0", "c", fields, "why" * 1000)
    copied = [k for k in copy if k.startswith("command.")]
    assert len(copied) == MAX_COPIED_FIELDS and copy["command.request_id"] == "abc"
    assert len(copy["command.payload"].encode()) <= MAX_VALUE_BYTES
    assert len(copy["reason"].encode()) <= MAX_REASON_BYTES
    assert copy["field_count"] == "1003" and copy["truncated"] == "true"
    assert sum(len(k.encode()) + len(v.encode()) for k, v in copy.items()) <= MAX_COPY_BYTES
    small = entry("s", "1-0", "c", {b"reply_stream": b"saga:{leases}"}, "refused")
    assert small["truncated"] == "false" and small["command.reply_stream"] == "saga:{leases}"


def test_trace_context() -> None:
    tp = TraceParent.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert tp is not None and str(tp) == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for bad in (
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ):
        assert TraceParent.parse(bad) is None, bad
    assert TraceParent.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x") is not None


def test_saga_ids_have_the_uuid4_form() -> None:
    a = saga_id_for_start("mission:start", "1700000000000-0")
    assert a == saga_id_for_start("mission:start", "1700000000000-0")
    assert a != saga_id_for_start("mission:start", "1700000000000-1")
    assert len(a) == 32 and a[12] == "4" and a[16] in "89ab"


SAGA_ID = "6f1c2b0a9d8e4f7a8b6c5d4e3f2a1b0c"


def test_record_keys_are_the_daemons() -> None:
    # Values src/store/keys.rs computes and pins: a saga's record is found
    # from its id through them, so they never change.
    assert (slot("foo"), slot("bar"), slot("{foo}.bar")) == (12182, 5061, 12182)
    assert [partition_tag(p) for p in range(4)] == ["p0.52", "p1.121", "p2.332", "p3.103"]
    assert partition_of(SAGA_ID) == 23
    assert record_key(SAGA_ID) == f"saga:{{{partition_tag(23)}}}:record:{SAGA_ID}"
    assert record_key(SAGA_ID, "acme:") == f"acme:{{{partition_tag(23)}}}:record:{SAGA_ID}"


def test_partitions_fall_in_equal_ranges_of_slots_in_order() -> None:
    for p in range(PARTITIONS):
        assert slot(f"saga:{{{partition_tag(p)}}}:outbox") // (16384 // PARTITIONS) == p
    for saga_id in (SAGA_ID, saga_id_for_start("mission:start", "1700000000000-0")):
        assert slot(record_key(saga_id)) // (16384 // PARTITIONS) == partition_of(saga_id)
    with pytest.raises(ValueError):
        partition_tag(PARTITIONS)


@pytest.mark.parametrize(
    "key, tag",
    [("foo", "foo"), ("{foo}.bar", "foo"), ("{}foo", "{}foo"), ("a{b}c}", "b"), ("x{", "x{"), ("}{a}", "a"), ("{{a}}", "{a")],
)
def test_hash_tags_follow_redis_cluster(key: str, tag: str) -> None:
    assert hash_tag(key) == tag


def test_operator_keys_and_signatures() -> None:
    key = OperatorKey.parse(" alice:0123456789abcdef0123456789abcdef ")
    assert key.name == "alice" and "0123" not in repr(key)
    for bad in ("alice:short", "bad name:" + "x" * 32, "no-colon"):
        with pytest.raises(ValueError):
            OperatorKey.parse(bad)
    # HMAC-SHA256 of the length-prefixed fields (src/protocol/control.rs).
    import hashlib
    import hmac

    text = b"sagaflow operator request v1\n5:alice\n1:s\n6:cancel\n0:\n2:\xc3\xa9\n1:5\n1:n\n"
    expected = hmac.new(key.secret.encode(), text, hashlib.sha256).hexdigest()
    assert key.sign("s", "cancel", None, "é", 5, "n") == expected


def test_errors_that_may_pass_are_told_from_those_that_never_will() -> None:
    import redis.exceptions as rex

    assert not is_permanent(rex.ConnectionError("gone"))
    assert not is_permanent(rex.TimeoutError())
    assert not is_permanent(rex.BusyLoadingError("loading"))
    assert not is_permanent(rex.ResponseError("BUSY Redis is busy running a script"))
    assert not is_permanent(rex.ResponseError("max number of clients reached"))
    assert not is_permanent(OSError("reset"))
    assert is_permanent(rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert is_permanent(rex.ResponseError("Invalid stream ID"))
    assert is_permanent(rex.DataError("bad"))


def test_results_are_json_text() -> None:
    assert json.loads(dict(completed_fields(sample(), sample().parent.child(), 1, None))["result"]) is None
    assert truncate_text("short", 10) == "short"


def test_a_record_state_is_read_as_the_daemon_writes_it() -> None:
    # src/saga/state.rs: the phase is an object named by `name`, holding what
    # only that phase has; units are a step's index and, in a fan-out, a branch.
    names = step_names(
        "name: mission\nsteps:  # in order\n  - name: allocate\n    stream: a\n    compensation:\n"
        "      command: release\n  - stream: e   # name second\n    name: 'explore'\n"
        "    for_each: ${input.robots}\n    input:\n      - name: not-a-step\n  - name: merge\n"
    )
    assert names == ["allocate", "explore", "merge"]
    assert step_names("steps: [{name: a}]\n") is None
    work = {"steps": {}, "done": [], "undone": [{"step": 1, "branch": 1}, {"step": 1, "branch": 0}, {"step": 0}],
            "skipped": [{"step": 2}]}
    compensated = {"name": "compensated", "ended_at_ms": 7,
                   "failure": {"step": "merge", "reason": "no maps", "cancelled_by": None}}
    state = SagaState.from_json("s1", {"saga": "mission", "phase": compensated, "work": work, "results": {}}, names)
    assert (state.status, state.ended, state.ended_at_ms) == ("compensated", True, 7)
    assert (state.failed_step, state.reason) == ("merge", "no maps")
    assert state.undone == ["explore[1]", "explore[0]", "allocate"] and state.skipped == ["merge"]
    assert state.outcome().compensated == state.undone
    # Without the definition's names, a step is named by its index.
    assert SagaState.from_json("s1", {"phase": compensated, "work": work}).undone == ["#1[1]", "#1[0]", "#0"]
    unwinding = {"name": "compensating", "step": "explore", "branch": 2, "reason": "ditch", "cancelled_by": "ops"}
    state = SagaState.from_json("s1", {"phase": unwinding})
    assert (state.status, state.ended, state.failed_step, state.cancelled_by) == ("compensating", False, "explore", "ops")
    stuck = {"name": "failed", "ended_at_ms": 9, "abandoned_by": "ops",
             "halt": {"by": "compensation", "failure": {"step": "merge", "reason": "no maps"}}}
    state = SagaState.from_json("s1", {"phase": stuck})
    assert (state.status, state.failed_step, state.abandoned, state.parked) == ("failed", "merge", True, False)
    parked = {"name": "failed", "ended_at_ms": 9,
              "halt": {"by": "parked", "reason": "too large", "replies": [], "resume": unwinding}}
    state = SagaState.from_json("s1", {"phase": parked})
    assert (state.status, state.failed_step, state.abandoned, state.parked) == ("failed", "explore", False, True)
    # The bare name of records written before phases held their facts.
    assert SagaState.from_json("s1", {"phase": "running"}).status == "running"
