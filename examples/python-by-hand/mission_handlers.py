#!/usr/bin/env python3
"""Command handlers for the reference mission, written by hand against docs/protocol.md.

Nothing but redis-py and the standard library: every step of the exchange is
spelled out, so that this file can serve as a reference for handlers in other
languages. Quoted section names in the comments are headings of docs/protocol.md.

    python3 examples/python-by-hand/mission_handlers.py --redis-url redis://127.0.0.1:6379
"""
import argparse, json, logging, os, random, secrets, signal, socket, threading, time  # noqa: E401

import redis

log = logging.getLogger("mission_handlers")

# --- The work: results the next steps' `input` templates refer to ----------
# A value is looked up at the top of the payload (a step's `input` template),
# then under `input`, then in any earlier step's `result`: a step or
# compensation without a template gets {"input": ..., "steps": {...}, ...}.


def lookup(payload, key):
    steps = payload.get("steps") if isinstance(payload.get("steps"), dict) else {}
    results = [step.get("result") for step in steps.values() if isinstance(step, dict)]
    places = [payload, payload.get("input"), *results]
    return next((p[key] for p in places if isinstance(p, dict) and p.get(key) is not None), None)


def robot_ids(payload):
    """The one `robot_id` of a branch's command (the mission explores with
    each robot in a branch of its own: "Branches on the audit stream"), else
    `robot_ids`, else the robots of `routes` or `partial_maps`."""
    if isinstance(payload.get("robot_id"), str):
        return [payload["robot_id"]]
    ids = lookup(payload, "robot_ids")
    if isinstance(ids, list):
        return ids
    for key in ("routes", "partial_maps"):
        items = lookup(payload, key)
        if isinstance(items, list):
            return [item.get("robot_id") for item in items if isinstance(item, dict)]
    return []


def allocate_resources(payload):
    try:  # `robots` may be a number or a numeric string
        count = int(float(lookup(payload, "robots")))
    except (TypeError, ValueError, OverflowError):
        count = 2
    count = min(count if count >= 1 else 2, 64)
    return {"robot_ids": [f"robot-{i}" for i in range(1, count + 1)], "area": lookup(payload, "area")}


def plan_route(payload):  # one lane of the area per robot, swept out and back
    lane = lambda y: [[0, y], [100, y], [100, y + 5], [0, y + 5]]  # noqa: E731
    routes = [{"robot_id": r, "waypoints": lane(10 * i)} for i, r in enumerate(robot_ids(payload))]
    return {"routes": routes, "area": lookup(payload, "area")}


def explore(robot_id):
    return {"robot_id": robot_id, "map_id": "partial-" + secrets.token_hex(4),
            "cells_explored": random.randint(100, 999)}


def perform_exploration(payload):
    """One robot's partial map for a branch's command (`robot_id`); for
    several robots in one command (`robot_ids` or `routes`), `partial_maps`."""
    if isinstance(payload.get("robot_id"), str):
        return explore(payload["robot_id"])
    return {"partial_maps": [explore(r) for r in robot_ids(payload)]}


def partial_maps(payload):
    maps = lookup(payload, "partial_maps")
    return [m for m in maps if isinstance(m, dict)] if isinstance(maps, list) else []


def discard_maps(payload):
    merged = [lookup(payload, "map_id")] if lookup(payload, "map_id") else []
    return {"discarded": [m.get("map_id") for m in partial_maps(payload)] + merged}


# Command name (the command's `event_type`) -> (command stream, work).
HANDLERS = {
    "allocate_resources": ("resources:commands", allocate_resources),
    "release_resources": ("resources:commands", lambda p: {"released": robot_ids(p)}),
    "plan_route": ("routing:commands", plan_route),
    "cancel_route": ("routing:commands", lambda p: {"cancelled": robot_ids(p)}),
    "perform_exploration": ("exploration:commands", perform_exploration),
    "abort_exploration": ("exploration:commands", lambda p: {"aborted": robot_ids(p)}),
    "integrate_maps": ("mapping:commands", lambda p: {"map_id": "map-" + secrets.token_hex(6),
                                                      "merged_from": len(partial_maps(p))}),
    "discard_maps": ("mapping:commands", discard_maps),
}
STREAMS = sorted({stream for stream, _ in HANDLERS.values()})
# "Commands: daemon to handler": every field a command carries that we use.
REQUIRED = ("correlation_id", "saga_id", "request_id", "traceparent", "event_type",
            "step", "kind", "reply_stream", "payload", "deadline_ms")
RECORD_TTL_S = 24 * 3600  # far longer than the daemon may send a request_id again
# "For people writing handlers by hand": the bounds of reply stream names and
# of the dead-letter stream, the same as the Rust SDK's.
MAX_REPLY_STREAM_BYTES = 256
DEAD_LETTER_MAXLEN = 10_000  # XADD MAXLEN ~
MAX_COPIED_FIELDS, MAX_NAME_BYTES, MAX_VALUE_BYTES, MAX_REASON_BYTES = 32, 64, 256, 512
CLOCK_RESYNC_S = 60  # clocks move apart slowly; a stepped one is caught within a minute


class RedisClock:
    """"Time": deadline_ms is a time on Redis's clock, which this host's may
    be ahead of or behind; read the offset with TIME now and then."""

    def __init__(self):
        self.offset_ms, self.next_sync = 0, 0.0

    def sync(self, r):
        if time.monotonic() < self.next_sync:
            return
        self.next_sync = time.monotonic() + CLOCK_RESYNC_S
        before = time.time()
        try:
            secs, micros = r.time()
        except redis.ResponseError as e:  # TIME not allowed: keep the last offset
            log.warning("cannot read Redis's clock (%s); deadlines are read on the last offset", e)
            return
        after = time.time()  # Redis read its clock about half way through
        self.offset_ms = int((secs + micros / 1e6 - (before + after) / 2) * 1000)

    def now_ms(self):
        return int(time.time() * 1000) + self.offset_ms


CLOCK = RedisClock()


def now_ms():
    return CLOCK.now_ms()


# --- The exchange ------------------------------------------------------------

def child_span(traceparent):
    """"Identifiers and trace context": our span is a child of the command's,
    in the same trace, with a span id of its own."""
    parts = traceparent.split("-")
    valid = len(parts) == 4 and len(parts[1]) == 32
    trace_id, flags = (parts[1], parts[3]) if valid else (secrets.token_hex(16), "01")
    span_id = secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{flags}", span_id


def reply(cmd, span, status, **extra):
    """"Replies: handler to daemon": ids copied from the command, our span,
    `parent_span_id` = the span id in our `traceparent`, a unix-ms timestamp."""
    fields = {k: cmd[k] for k in ("correlation_id", "saga_id", "request_id", "event_type")}
    fields.update(traceparent=span[0], parent_span_id=span[1], status=status, timestamp=str(now_ms()))
    fields.update(extra)
    return fields


def reply_stream_refusal(prefix, reply_stream, request_id):
    """Why `reply_stream` is no reply stream of the daemon's, or None: only
    `<prefix><node>.<epoch>` and `<prefix><node>.<epoch>:<request_id>` (this
    command's own) are, so that a forged command cannot make us write to any
    other key (a trigger stream would start sagas)."""
    if len(reply_stream.encode()) > MAX_REPLY_STREAM_BYTES:
        return f"reply_stream is over {MAX_REPLY_STREAM_BYTES} bytes"
    if any(c.isspace() or not c.isprintable() for c in reply_stream):
        return "reply_stream holds whitespace or a control character"
    if not reply_stream.startswith(prefix):
        return f"reply_stream does not start with the reply streams' prefix `{prefix}`"
    rest = reply_stream[len(prefix):]
    if rest.endswith(":" + request_id):
        rest = rest[:-len(request_id) - 1]
    node, dot, epoch = rest.rpartition(".")
    if not (node and dot and epoch) or ":" in epoch:
        return "reply_stream is not of the form `<prefix><node>.<epoch>[:<request_id>]`"
    return None


def cut(text, limit):
    """At most `limit` bytes of `text`, on a character boundary."""
    return text.encode()[:limit].decode("utf-8", "ignore")


def dead_letter(r, args, stream, entry_id, raw, reason):
    """A command that can never be answered: a bounded copy of it goes to the
    group's dead-letter stream and it is acknowledged, in one MULTI/EXEC."""
    raw = raw or {}
    text = lambda b: b.decode("utf-8", "replace")  # noqa: E731
    names = sorted(raw, key=lambda k: (text(k) not in REQUIRED, text(k)))
    copy = {"reason": cut(reason, MAX_REASON_BYTES), "stream": stream,
            "entry_id": entry_id.decode(), "field_count": str(len(raw))}
    cut_short = len(names) > MAX_COPIED_FIELDS
    for name in names[:MAX_COPIED_FIELDS]:
        short_name, short_value = cut(text(name), MAX_NAME_BYTES), cut(text(raw[name]), MAX_VALUE_BYTES)
        cut_short |= short_name != text(name) or short_value != text(raw[name])
        copy["command." + short_name] = short_value
    copy["truncated"] = str(cut_short).lower()
    pipe = r.pipeline(transaction=True)
    pipe.xadd(f"handler:{{{args.group}}}:dead-letter", copy, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
    pipe.xack(stream, args.group, entry_id)
    try:
        pipe.execute()
    except redis.ResponseError as e:  # refused for good (a key of another type): still acknowledge
        log.error("%s %s: cannot dead-letter (%s); acknowledged without a copy", stream, entry_id.decode(), e)
        r.xack(stream, args.group, entry_id)
    COUNTS["dead_lettered"] += 1


COUNTS = {"dead_lettered": 0}


def with_heartbeats(r, cmd, span, work):
    """Runs work(); meanwhile, for a step with a heartbeat_timeout (the command
    carries heartbeat_timeout_ms), a `heartbeat` reply every third of it, so
    that long work is not taken for a dead handler. None after work() returns."""
    every_ms = int(cmd.get("heartbeat_timeout_ms") or 0) // 3
    if every_ms <= 0:
        return work()
    done = threading.Event()

    def beat():
        while not done.wait(max(every_ms, 100) / 1000):
            r.xadd(cmd["reply_stream"], reply(cmd, span, "heartbeat"))

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        return work()
    finally:
        done.set()
        beater.join()


def handle(r, args, stream, entry_id, raw):
    """Takes one command entry through the contract, ending with its XACK."""
    def ack():
        r.xack(stream, args.group, entry_id)

    try:  # "General rules": a malformed entry is reported and dead-lettered
        cmd = {k.decode(): v.decode() for k, v in (raw or {}).items()}
        route = HANDLERS.get(cmd.get("event_type"))
        if route is None or route[0] != stream:
            return ack()  # not ours: other services may share the stream (with groups of their own)
        missing = [name for name in REQUIRED if not cmd.get(name)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        payload, deadline_ms = json.loads(cmd["payload"]), int(cmd["deadline_ms"])
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        log.warning("%s %s: malformed command dead-lettered (%s)", stream, entry_id.decode(), e)
        return dead_letter(r, args, stream, entry_id, raw, f"malformed command: {e}")
    name, request_id = cmd["event_type"], cmd["request_id"]
    refusal = reply_stream_refusal(args.reply_stream_prefix, cmd["reply_stream"], request_id)
    if refusal:  # written nowhere: neither `start` nor a final reply
        reason = cut(f"{refusal}: {cmd['reply_stream']!r}", MAX_REASON_BYTES)
        log.warning("%s %s: refused, dead-lettered (%s)", stream, entry_id.decode(), reason)
        return dead_letter(r, args, stream, entry_id, raw, reason)
    if now_ms() > deadline_ms:  # on Redis's clock; the daemon has stopped waiting: silence is a timeout
        log.info("%s %s: deadline passed, skipped", name, request_id)
        return ack()

    # Idempotency on request_id: a command answered before gets its recorded
    # final reply again, and the work is not done twice.
    record_key = f"handler:{{{args.group}}}:done:{request_id}"
    recorded = r.get(record_key)
    if recorded is not None:
        final = json.loads(recorded)
        log.info("%s %s: answered before, replaying the recorded reply", name, request_id)
    else:
        span = child_span(cmd["traceparent"])
        r.xadd(cmd["reply_stream"], reply(cmd, span, "start"))  # `start` and `progress`
        r.xadd(cmd["reply_stream"], reply(cmd, span, "progress", progress="50"))  # are optional
        if cmd["kind"] == "action" and cmd["step"] == args.fail_step:
            final = reply(cmd, span, "failed", error=f"{name} failed on request", retryable="false")
        else:
            try:
                result = with_heartbeats(r, cmd, span, lambda: HANDLERS[name][1](payload))
                final = reply(cmd, span, "completed", result=json.dumps(result))
            except Exception as e:  # a bug or a passing fault: worth another attempt
                final = reply(cmd, span, "failed", error=f"{type(e).__name__}: {e}", retryable="true")
        log.info("%s %s: %s", name, request_id, final["status"])

    # The final reply, its record and the acknowledgement in one MULTI/EXEC:
    # all of them happen or none, so what is recorded was sent and acknowledged.
    pipe = r.pipeline(transaction=True)
    pipe.xadd(cmd["reply_stream"], final)
    pipe.set(record_key, json.dumps(final), ex=RECORD_TTL_S)
    pipe.xack(stream, args.group, entry_id)
    pipe.execute()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--group", default="python-handlers", help="our consumer group on each stream")
    parser.add_argument("--fail-step", metavar="STEP", help="answer STEP's action `failed`, not retryable")
    parser.add_argument("--reply-stream-prefix", default="saga:replies:",
                        help="the daemon's reply_stream_prefix: replies go to no other streams")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    consumer = f"{socket.gethostname()}-{os.getpid()}"

    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then stop
        signal.signal(sig, lambda *_: stopping.append(True))

    r = redis.Redis.from_url(args.redis_url)  # bytes, so a non-UTF-8 field is one bad entry
    groups_ready = False
    log.info("serving %s as %s/%s", ", ".join(STREAMS), args.group, consumer)
    while not stopping:
        try:
            if not groups_ready:  # our own group, at 0: commands sent before we started count
                for stream in STREAMS:
                    try:
                        r.xgroup_create(stream, args.group, id="0", mkstream=True)
                    except redis.ResponseError as e:
                        if "BUSYGROUP" not in str(e):
                            raise
                groups_ready = True
            CLOCK.sync(r)
            # BLOCK bounds how long a stop waits for the read in progress.
            batches = r.xreadgroup(args.group, consumer, {s: ">" for s in STREAMS}, count=16, block=1000)
            for stream, entries in batches:
                for entry_id, fields in entries:
                    handle(r, args, stream.decode(), entry_id, fields)
        except redis.RedisError as e:
            # Redis away or restarted (groups gone): try again. An entry left
            # unanswered stays pending and unanswered; the daemon counts that
            # attempt as timed out and retries under a new request_id.
            log.warning("redis: %s; retrying in 1s", e)
            groups_ready = False
            time.sleep(1)
    log.info("stopped (%d commands dead-lettered)", COUNTS["dead_lettered"])


if __name__ == "__main__":
    main()
