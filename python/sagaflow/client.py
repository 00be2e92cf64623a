"""Starting sagas, waiting for them, reading their state and cancelling
them: :class:`Client` (blocking, redis-py) and :class:`AsyncClient`
(``redis.asyncio``), the same operations over the streams and keys of
docs/protocol.md.

Every wait is bounded, and every blocking read blocks for less than the
socket timeout of the client's connections (half of it, at most a second),
so a client made with a short ``socket_timeout`` still waits as long as asked.

Both clients run one implementation, written once against a small IO
interface: :class:`AsyncClient` awaits redis.asyncio; :class:`Client` runs the
same coroutines with blocking redis-py calls, which never suspend.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Dict, List, Mapping, Optional, Tuple, TypeVar

from ._keys import definition_key, record_key
from ._protocol import saga_id_for_start, to_json
from ._redis import (
    async_client,
    entries as decode_entries,
    read_reply,
    redis_mode as parse_redis_mode,
    run_blocking,
    socket_timeout_of,
    sync_client,
    text,
)
from .errors import NoAnswer, OperatorRequestRefused, StartRejected

T = TypeVar("T")

#: The audit stream of saga events.
DEFAULT_EVENTS_STREAM = "saga:events"
#: The operators' control stream.
DEFAULT_CONTROL_STREAM = "saga:control"
#: ``XADD ... MAXLEN ~`` of the control stream, the daemon's default.
DEFAULT_CONTROL_MAXLEN = 10_000
#: The default trigger stream.
DEFAULT_TRIGGER_STREAM = "mission:start"
#: How long a start with an idempotency key, or an operator's request, waits
#: for the daemon's answer by default, in seconds.
DEFAULT_ACCEPT_TIMEOUT = 10.0
#: The longest block of one ``XREAD``, in ms; shorter when the connections'
#: socket timeout asks for it.
MAX_BLOCK_MS = 1000
#: Events read at once while waiting.
READ_COUNT = 100
#: The longest ``reason`` of an operator's request, in bytes.
MAX_OPERATOR_REASON_BYTES = 1024
#: The shortest secret of an operator's key.
MIN_SECRET_LEN = 32

_TERMINAL_PHASES = ("completed", "compensated", "failed")
_END_EVENTS = {"saga_completed": "completed", "saga_compensated": "compensated", "saga_failed": "failed"}


@dataclass(frozen=True)
class OperatorKey:
    """An operator's key, ``name:secret``; the daemons hold every operator's
    key in ``operator_keys``."""

    name: str
    secret: str = field(repr=False)

    @staticmethod
    def parse(text: str) -> "OperatorKey":
        name, colon, secret = text.strip().partition(":")
        if not colon:
            raise ValueError("an operator key is written name:secret")
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")
        if not name or len(name) > 64 or not set(name) <= allowed:
            raise ValueError(f"the operator key name {name[:64]!r} must be 1 to 64 letters, digits, `.`, `_`, `@` or `-`")
        if len(secret.encode()) < MIN_SECRET_LEN:
            raise ValueError(
                f"the secret of operator key {name!r} is {len(secret)} characters; at least {MIN_SECRET_LEN} "
                "(make one with `openssl rand -hex 32`)"
            )
        return OperatorKey(name, secret)

    def sign(self, saga_id: str, action: str, step: Optional[str], reason: str, issued_ms: int, nonce: str) -> str:
        """HMAC-SHA256 in hex of the request's fields, each written as its
        length in bytes, ``:``, the field and a line break, after
        ``sagaflow operator request v1\\n`` (src/protocol/control.rs)."""
        signed = bytearray(b"sagaflow operator request v1\n")
        for value in (self.name, saga_id, action, step or "", reason, str(issued_ms), nonce):
            raw = value.encode("utf-8")
            signed += str(len(raw)).encode() + b":" + raw + b"\n"
        return hmac.new(self.secret.encode("utf-8"), bytes(signed), hashlib.sha256).hexdigest()


@dataclass
class Outcome:
    """How a saga ended, or that its start was rejected.

    ``status`` is ``completed``, ``compensated``, ``cancelled`` (compensated
    because an operator cancelled it), ``failed`` (a compensation could not be
    completed: someone has to look at it) or ``rejected`` (the start was
    refused; ``reason`` says why).
    """

    status: str
    saga_id: str
    #: Step name to result, for a completed saga.
    results: Dict[str, Any] = field(default_factory=dict)
    failed_step: Optional[str] = None
    reason: Optional[str] = None
    #: Steps undone, in the order undone.
    compensated: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    #: The payload of the event that ended it (or what the record holds).
    payload: Dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass
class SagaState:
    """What a saga's record says (its ``state`` field; the record's key is
    :func:`sagaflow._keys.record_key`'s: ``saga:{<tag>}:record:<saga_id>``)."""

    saga_id: str
    saga: str
    #: ``running``, ``compensating``, ``completed``, ``compensated`` or ``failed``.
    status: str
    correlation_id: str
    input: Any
    results: Dict[str, Any]
    failed_step: Optional[str]
    reason: Optional[str]
    #: The operator who cancelled the saga, when that is why it unwound.
    cancelled_by: Optional[str]
    undone: List[str]
    skipped: List[str]
    abandoned: bool
    parked: bool
    started_at_ms: Optional[int]
    ended_at_ms: Optional[int]
    #: The whole state as stored; its shape is the daemon's and may grow.
    raw: Dict[str, Any]

    @property
    def ended(self) -> bool:
        return self.status in _TERMINAL_PHASES

    @staticmethod
    def from_json(saga_id: str, state: Mapping[str, Any], step_names: Optional[List[str]] = None) -> "SagaState":
        """Reads the daemon's state (src/saga/state.rs): ``phase`` is an
        object named by ``name`` that holds what only that phase has (its
        failure, when it ended, what halted a failed saga); the units undone
        and skipped are ``{"step": <index>, "branch": <n>}``, named here from
        ``step_names`` (the definition's, in order) as the daemon names them,
        ``<step>`` or ``<step>[<branch>]``, else ``#<index>``."""
        found = state.get("phase")
        # A bare name: the form of records written before phases held their facts.
        phase: Dict[str, Any] = found if isinstance(found, dict) else {"name": found}
        found = phase.get("halt")
        halt: Dict[str, Any] = found if isinstance(found, dict) else {}
        failure = _failure_of(phase)
        found = state.get("work")
        work: Dict[str, Any] = found if isinstance(found, dict) else {}

        def names(units: Any) -> List[str]:
            return [_unit_name(unit, step_names) for unit in units or []]

        return SagaState(
            saga_id=str(state.get("saga_id") or saga_id),
            saga=str(state.get("saga", "")),
            status=str(phase.get("name", "")),
            correlation_id=str(state.get("correlation_id", "")),
            input=state.get("input"),
            results=dict(state.get("results") or {}),
            failed_step=failure.get("step"),
            reason=failure.get("reason"),
            cancelled_by=failure.get("cancelled_by"),
            undone=names(work.get("undone")),
            skipped=names(work.get("skipped")),
            abandoned=phase.get("abandoned_by") is not None,
            parked=halt.get("by") == "parked",
            started_at_ms=state.get("started_at_ms"),
            ended_at_ms=phase.get("ended_at_ms"),
            raw=dict(state),
        )

    def outcome(self) -> Outcome:
        """The outcome of a saga that has ended."""
        return _outcome(self.status, self.saga_id, {
            "results": self.results,
            "failed_step": self.failed_step,
            "reason": self.reason,
            "cancelled_by": self.cancelled_by,
            "compensated": self.undone,
            "skipped": self.skipped,
        })


def _failure_of(phase: Mapping[str, Any]) -> Dict[str, Any]:
    """Why a saga unwinds or unwound, from its phase: a compensating phase
    is its failure; a compensated one holds it; a failed one holds it in what
    halted it, a parked one in the phase it goes back to."""
    name = phase.get("name")
    if name == "compensating":
        return dict(phase)
    if name == "compensated":
        found = phase.get("failure")
        return dict(found) if isinstance(found, dict) else {}
    if name == "failed":
        halt = phase.get("halt")
        if not isinstance(halt, dict):
            return {}
        if isinstance(halt.get("failure"), dict):
            return dict(halt["failure"])
        if isinstance(halt.get("resume"), dict):
            return _failure_of(halt["resume"])
    return {}


def _unit_name(unit: Any, step_names: Optional[List[str]]) -> str:
    """A step's name, or a branch's as ``<step>[<branch>]``, from a unit of
    the state; ``#<index>`` for a step the names do not reach."""
    if not isinstance(unit, dict):
        return str(unit)
    index = unit.get("step")
    if step_names is not None and isinstance(index, int) and 0 <= index < len(step_names):
        name = step_names[index]
    else:
        name = f"#{index}"
    branch = unit.get("branch")
    return name if branch is None else f"{name}[{branch}]"


def step_names(definition: str) -> Optional[List[str]]:
    """The names of a definition's steps, in order, from its YAML text as
    the daemons keep it: the ``name`` of each item of the top-level
    ``steps`` list, written in block style as sagas/ writes it. None when
    the text is not of that shape."""
    lines = [line.split(" #", 1)[0].rstrip() for line in definition.splitlines()]
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        at = next(i for i, line in enumerate(lines) if line == "steps:")
    except StopIteration:
        return None
    names: List[str] = []
    dash: Optional[int] = None
    key_indent: Optional[int] = None
    for line in lines[at + 1 :]:
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break
        body = line.strip()
        if body.startswith("- ") and (dash is None or indent == dash):
            dash, key_indent = indent, indent + 2
            names.append("")
            body = body[2:].strip()
            indent = key_indent
        if not names or indent != key_indent or not body.startswith("name:"):
            continue
        names[-1] = body[len("name:") :].strip().strip("'\"")
    return names if names and all(names) else None


def _outcome(status: str, saga_id: str, payload: Mapping[str, Any]) -> Outcome:
    reason = payload.get("reason")
    if status == "compensated" and payload.get("cancelled_by"):
        status = "cancelled"
    return Outcome(
        status=status,
        saga_id=saga_id,
        results=dict(payload.get("results") or {}),
        failed_step=payload.get("failed_step"),
        reason=reason if isinstance(reason, str) else None,
        compensated=list(payload.get("compensated") or []),
        skipped=list(payload.get("skipped") or []),
        payload=dict(payload),
    )


@dataclass
class _Started:
    entry_id: str
    saga_id: str
    stream: str
    duplicate: bool = False


# --- The implementation, over an IO of either kind --------------------------


class _Core:
    def __init__(
        self,
        conn: Any,
        connect: Optional[Callable[[], Awaitable[Any]]],
        is_async: bool,
        operator_key: Optional[str],
        events_stream: str,
        control_stream: str,
        control_maxlen: int,
        accept_timeout: float,
    ) -> None:
        self.conn = conn
        #: Opens ``conn`` at the first call when it is None (an asyncio
        #: client that asks first whether Redis is a cluster).
        self.connect = connect
        self.is_async = is_async
        key = operator_key if operator_key is not None else os.environ.get("SAGAFLOW_OPERATOR_KEY")
        self.operator_key = OperatorKey.parse(key) if key else None
        self.events_stream = events_stream
        self.control_stream = control_stream
        self.control_maxlen = control_maxlen
        self.accept_timeout = accept_timeout
        self.block_ms = MAX_BLOCK_MS
        if conn is not None:
            self.set_block(conn)

    def set_block(self, conn: Any) -> None:
        timeout = socket_timeout_of(conn)
        # Below the socket timeout, so that a read that finds nothing returns
        # before the connection gives up on it.
        self.block_ms = MAX_BLOCK_MS if timeout is None else max(1, min(MAX_BLOCK_MS, int(timeout * 500)))

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.conn is None and self.connect is not None:
            conn = await self.connect()
            self.set_block(conn)
            self.conn = conn
        # Every call names one key at most, so each goes as it is to one
        # Redis or to the master of its key's slot on a cluster.
        result = getattr(self.conn, name)(*args, **kwargs)
        if self.is_async:
            result = await result
        return result

    async def last_id(self, stream: str) -> str:
        last = decode_entries(await self.call("xrevrange", stream, "+", "-", count=1))
        return last[0][0] if last else "0-0"

    async def read_after(self, stream: str, after: str, remaining: float) -> List[Tuple[str, Dict[str, str]]]:
        block = max(1, min(self.block_ms, int(remaining * 1000)))
        reply = await self.call("xread", {stream: after}, count=READ_COUNT, block=block)
        out = []
        for _, items in read_reply(reply):
            for entry_id, fields in items:
                out.append((entry_id, {text(k): text(v) for k, v in (fields or {}).items()}))
        return out

    async def redis_now_ms(self) -> int:
        secs, micros = await self.call("time")
        return int(secs) * 1000 + int(micros) // 1000

    async def start(
        self,
        saga: Optional[str],
        payload: Any,
        correlation_id: Optional[str],
        idempotency_key: Optional[str],
        traceparent: Optional[str],
        stream: str,
        accept_timeout: Optional[float],
    ) -> _Started:
        fields: Dict[str, str] = {"payload": to_json({} if payload is None else payload)}
        for name, value in (
            ("saga", saga),
            ("correlation_id", correlation_id),
            ("idempotency_key", idempotency_key),
            ("traceparent", traceparent),
        ):
            if value is not None:
                fields[name] = value
        after = await self.last_id(self.events_stream) if idempotency_key is not None else None
        entry_id = text(await self.call("xadd", stream, fields))
        started = _Started(entry_id, saga_id_for_start(stream, entry_id), stream)
        if after is None:
            return started
        # With a key, the saga may be another one: the daemon says which.
        timeout = self.accept_timeout if accept_timeout is None else accept_timeout
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"no daemon took the start {entry_id} on {stream} within {timeout:g}s", entry_id)
            for event_id, event in await self.read_after(self.events_stream, after, remaining):
                after = event_id
                kind = event.get("event_type")
                if kind == "saga_started" and event.get("saga_id") == started.saga_id:
                    return started
                if kind in ("saga_duplicate", "saga_rejected"):
                    about = _payload(event)
                    if about.get("entry_id") != entry_id or about.get("stream", stream) != stream:
                        continue
                    if kind == "saga_rejected":
                        raise StartRejected(str(about.get("reason", "")), entry_id)
                    started.saga_id = str(about.get("existing_saga_id", ""))
                    started.duplicate = True
                    return started

    async def state(self, saga_id: str) -> Optional[SagaState]:
        raw = await self.call("hget", record_key(saga_id), "state")
        if raw is None:
            return None
        try:
            state = json.loads(text(raw))
        except ValueError:
            return None
        if not isinstance(state, dict):
            return None
        return SagaState.from_json(saga_id, state, await self.step_names(state))

    async def step_names(self, state: Mapping[str, Any]) -> Optional[List[str]]:
        """The step names of the definition version the saga runs on, to
        name the units of its state; None when that version is not kept."""
        saga, version = state.get("saga"), state.get("definition_version")
        if not isinstance(saga, str) or not isinstance(version, str) or not version:
            return None
        definition = await self.call("get", definition_key(saga, version))
        return None if definition is None else step_names(text(definition))

    async def wait(self, started: _Started, timeout: Optional[float]) -> Outcome:
        # Race-free: the stream's end first, then the record; an end written
        # after the record was read is on the stream after that point.
        after = await self.last_id(self.events_stream)
        state = await self.state(started.saga_id)
        if state is not None and state.ended:
            return state.outcome()
        if state is None and started.entry_id:
            # Not started yet, or rejected already: every event about the
            # start is written after it, on the same clock.
            ms = int(started.entry_id.split("-", 1)[0])
            after = min(after, f"{max(ms - 1, 0)}-0", key=_id_key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"the saga {started.saga_id} did not end within {timeout:g}s", started.entry_id)
            for event_id, event in await self.read_after(self.events_stream, after, remaining):
                after = event_id
                kind = event.get("event_type", "")
                if event.get("saga_id") == started.saga_id and kind in _END_EVENTS:
                    return _outcome(_END_EVENTS[kind], started.saga_id, _payload(event))
                if kind == "saga_rejected" and started.entry_id:
                    about = _payload(event)
                    if about.get("entry_id") == started.entry_id and about.get("stream", started.stream) == started.stream:
                        return Outcome("rejected", started.saga_id, reason=str(about.get("reason", "")), payload=about)

    async def operator_request(self, saga_id: str, action: str, reason: str, step: Optional[str], timeout: Optional[float]) -> Dict[str, Any]:
        key = self.operator_key
        if key is None:
            raise ValueError("no operator key: give operator_key=name:secret or set SAGAFLOW_OPERATOR_KEY")
        if len(reason.encode()) > MAX_OPERATOR_REASON_BYTES:
            raise ValueError(f"the reason is {len(reason.encode())} bytes, the limit is {MAX_OPERATOR_REASON_BYTES}")
        after = await self.last_id(self.events_stream)
        # Signed on Redis's clock, which the daemons compare it with.
        issued_ms = await self.redis_now_ms()
        nonce = uuid.uuid4().hex
        fields = {
            "saga_id": saga_id,
            "action": action,
            "by": key.name,
            "reason": reason,
            "issued_ms": str(issued_ms),
            "nonce": nonce,
            "signature": key.sign(saga_id, action, step, reason, issued_ms, nonce),
        }
        if step is not None:
            fields["step"] = step
        await self.call("xadd", self.control_stream, fields, maxlen=self.control_maxlen, approximate=True)
        wait = self.accept_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswer(f"no daemon answered the {action} of saga {saga_id} within {wait:g}s: is one running?")
            for event_id, event in await self.read_after(self.events_stream, after, remaining):
                after = event_id
                if event.get("saga_id") != saga_id or event.get("event_type") != "operator_action":
                    continue
                answer = _payload(event)
                if answer.get("action") != action or answer.get("by") != key.name or answer.get("reason") != reason:
                    continue
                if "refused" in answer:
                    raise OperatorRequestRefused(str(answer["refused"]), answer)
                return answer


def _payload(event: Mapping[str, str]) -> Dict[str, Any]:
    try:
        value = json.loads(event.get("payload", ""))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _id_key(entry_id: str) -> Tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine whose awaits all finish at once (blocking IO)."""
    return run_blocking(coro)


# --- The blocking client -------------------------------------------------------


class _Handle:
    """What both handles know of a started saga."""

    def __init__(self, core: _Core, started: _Started) -> None:
        self._core = core
        self._started = started

    @property
    def saga_id(self) -> str:
        return self._started.saga_id

    @property
    def entry_id(self) -> str:
        return self._started.entry_id

    @property
    def duplicate(self) -> bool:
        """True when the idempotency key was taken: ``saga_id`` is the saga
        that holds it."""
        return self._started.duplicate


class SagaHandle(_Handle):
    """A started saga: ``saga_id``, and the start entry it came from."""

    def wait(self, timeout: Optional[float] = None) -> Outcome:
        """Waits for the saga's end (or its start's rejection); raises
        :class:`~sagaflow.errors.NoAnswer` after ``timeout`` seconds."""
        return _drive(self._core.wait(self._started, timeout))

    def status(self) -> Optional[SagaState]:
        """The saga's record, or None when there is none (not started yet,
        rejected, or expired)."""
        return _drive(self._core.state(self.saga_id))

    def cancel(self, reason: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Asks the daemon driving the saga to cancel it, signed with the
        operator key; returns the payload of the daemon's
        ``operator_action`` event, or raises
        :class:`~sagaflow.errors.OperatorRequestRefused`."""
        return _drive(self._core.operator_request(self.saga_id, "cancel", reason, None, timeout))


class Client:
    """A blocking client. ``redis`` is a URL, a ``redis.Redis`` or a
    ``redis.cluster.RedisCluster``; by default ``SAGAFLOW_REDIS_URL`` or
    ``redis://127.0.0.1:6379``. ``operator_key`` (``name:secret``, default
    ``SAGAFLOW_OPERATOR_KEY``) signs cancellations.

    ``redis_mode`` says how the Redis of a URL is deployed: ``single``,
    ``cluster`` (a Redis Cluster, found from the node given) or ``auto``
    (the default, else ``SAGAFLOW_REDIS_MODE``), which asks it ``CLUSTER
    INFO`` once, here."""

    def __init__(
        self,
        redis_client: Any = None,
        *,
        operator_key: Optional[str] = None,
        events_stream: str = DEFAULT_EVENTS_STREAM,
        control_stream: str = DEFAULT_CONTROL_STREAM,
        control_maxlen: int = DEFAULT_CONTROL_MAXLEN,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
        redis_mode: Optional[str] = None,
    ) -> None:
        parse_redis_mode(redis_mode)
        if redis_client is None or isinstance(redis_client, str):
            redis_client = sync_client(redis_client, redis_mode)
        self.redis = redis_client
        self._core = _Core(redis_client, None, False, operator_key, events_stream, control_stream, control_maxlen, accept_timeout)

    def start(
        self,
        saga: Optional[str],
        payload: Any = None,
        *,
        correlation_id: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        traceparent: Optional[str] = None,
        stream: str = DEFAULT_TRIGGER_STREAM,
        accept_timeout: Optional[float] = None,
    ) -> SagaHandle:
        """Writes a start entry on ``stream``. With an ``idempotency_key`` it
        waits (at most ``accept_timeout``) for the daemon to take it, so that
        ``saga_id`` is the saga holding the key, and raises
        :class:`~sagaflow.errors.StartRejected` if the start is refused."""
        started = _drive(self._core.start(saga, payload, correlation_id, idempotency_key, traceparent, stream, accept_timeout))
        return SagaHandle(self._core, started)

    def handle(self, saga_id: str) -> SagaHandle:
        """A handle on a saga started elsewhere."""
        return SagaHandle(self._core, _Started("", saga_id, ""))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


# --- The asyncio client ----------------------------------------------------------


class AsyncSagaHandle(_Handle):
    """As :class:`SagaHandle`, for :class:`AsyncClient`."""

    async def wait(self, timeout: Optional[float] = None) -> Outcome:
        return await self._core.wait(self._started, timeout)

    async def status(self) -> Optional[SagaState]:
        return await self._core.state(self.saga_id)

    async def cancel(self, reason: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        return await self._core.operator_request(self.saga_id, "cancel", reason, None, timeout)


class AsyncClient:
    """As :class:`Client`, on ``redis.asyncio``. Given a URL with
    ``redis_mode`` ``auto``, it asks ``CLUSTER INFO`` at its first call."""

    def __init__(
        self,
        redis_client: Any = None,
        *,
        operator_key: Optional[str] = None,
        events_stream: str = DEFAULT_EVENTS_STREAM,
        control_stream: str = DEFAULT_CONTROL_STREAM,
        control_maxlen: int = DEFAULT_CONTROL_MAXLEN,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
        redis_mode: Optional[str] = None,
    ) -> None:
        parse_redis_mode(redis_mode)
        connect = None
        if redis_client is None or isinstance(redis_client, str):
            url = redis_client

            async def connect_url() -> Any:
                return await async_client(url, redis_mode)

            connect, redis_client = connect_url, None
        self._core = _Core(redis_client, connect, True, operator_key, events_stream, control_stream, control_maxlen, accept_timeout)

    @property
    def redis(self) -> Any:
        """The redis-py client in use; None before the first call when made
        from a URL."""
        return self._core.conn

    async def start(
        self,
        saga: Optional[str],
        payload: Any = None,
        *,
        correlation_id: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        traceparent: Optional[str] = None,
        stream: str = DEFAULT_TRIGGER_STREAM,
        accept_timeout: Optional[float] = None,
    ) -> AsyncSagaHandle:
        started = await self._core.start(saga, payload, correlation_id, idempotency_key, traceparent, stream, accept_timeout)
        return AsyncSagaHandle(self._core, started)

    def handle(self, saga_id: str) -> AsyncSagaHandle:
        return AsyncSagaHandle(self._core, _Started("", saga_id, ""))

    async def close(self) -> None:
        if self.redis is None:
            return
        close = getattr(self.redis, "aclose", None) or self.redis.close
        await close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()
