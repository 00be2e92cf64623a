"""Command handlers: an :class:`App` reads each command stream through a
consumer group and takes every command through the contract of
docs/protocol.md, as the Rust handler SDK (``src/handler/``) does.

For each command entry, in order: an entry that is no command (not UTF-8, a
field missing or invalid, over a bound) is dead-lettered; a command whose
``event_type`` has no handler here is acknowledged and ignored (other services
read the stream through groups of their own); a command whose
``reply_stream`` is no reply stream of the daemon's is dead-lettered without a
write to it; a command past its ``deadline_ms`` on Redis's clock is
acknowledged without a reply. Everything else gets ``start`` (in the round
trip that reads the deduplication record); a ``request_id`` answered before
gets its recorded final reply again without running the handler; any other
runs the handler, with heartbeats when the command asks for them, and gets
``completed`` or ``failed``: the queued progress, the final reply, its record
and the ``XACK`` in one ``MULTI`` on one Redis; on a Redis Cluster, where
their keys are in different slots, the record, then the replies, then the
``XACK`` (docs/protocol.md, "The handler SDK's replies").

What one app holds at most: :data:`BATCH` read entries per stream waiting
for a slot, ``max_in_flight`` commands (default
:data:`DEFAULT_MAX_IN_FLIGHT`), :data:`MAX_QUEUED_PROGRESS` unwritten
``progress``/``heartbeat`` replies per command, and a dead-letter copy of at
most :data:`sagaflow._dead_letter.MAX_COPY_BYTES` per command given up on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import inspect
import json
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, TypeVar

from redis import exceptions as rex

from . import _dead_letter
from ._batch import Batch
from ._clock import NOTABLE_OFFSET_MS, RESYNC_EVERY, RedisClock
from ._protocol import (
    Command,
    Fields,
    MalformedCommand,
    completed_fields,
    failed_fields,
    format_number,
    parse_record,
    record_json,
    reply_fields,
)
from ._redis import (
    Backoff,
    RedisLike,
    close_client,
    cluster_of,
    connection_settings,
    entries as decode_entries,
    is_busygroup,
    is_cluster_client,
    is_nogroup,
    is_permanent,
    open_client,
    open_cluster,
    read_reply,
    redis_mode as parse_redis_mode,
    text as as_text,
)
from ._reply_stream import DEFAULT_REPLY_STREAM_PREFIX, check_prefix, refusal
from ._tracing import CommandSpan
from .errors import Fatal, Retryable

log = logging.getLogger("sagaflow")

#: Entries taken per ``XREADGROUP`` or ``XAUTOCLAIM`` call. A reader hands them
#: out one by one as slots of ``max_in_flight`` free up, so this is also how
#: many read entries it holds beyond those in flight.
BATCH = 64
#: How long one ``XREADGROUP`` blocks, in ms. A read in progress is never
#: abandoned (an abandoned read stays live on the server and can move an entry
#: into the pending list unseen), so this is the longest a stop waits for it.
#: The readers' connections have a socket timeout of this plus
#: :data:`READ_TIMEOUT_MARGIN`, whatever the client given has.
BLOCK_MS = 1000
#: What a blocking read's socket timeout allows beyond its block, in seconds.
READ_TIMEOUT_MARGIN = 5.0
#: Socket timeout of the connection for replies, records and
#: acknowledgements when the client given has none, in seconds.
DEFAULT_COMMAND_TIMEOUT = 10.0
#: Default bound on commands handled at once: the reader stops reading while
#: all are taken, and unread entries wait in the stream.
DEFAULT_MAX_IN_FLIGHT = 1024
#: Default idle time after which an entry pending for another consumer of the
#: group is taken over at start-up, in seconds: long enough not to steal the
#: work of a live instance that is merely slow.
DEFAULT_RECLAIM_IDLE = 30.0
#: Default time a final reply is remembered for deduplication, in seconds:
#: far longer than the daemon may send one ``request_id`` again.
DEFAULT_RECORD_TTL = 86_400
#: Default time a stop waits for the commands in flight, in seconds; past it
#: they are cancelled and stay pending, for another instance to take over.
DEFAULT_GRACE = 30.0
#: Progress and heartbeat replies waiting to be written per command: each
#: supersedes the ones before, so past this the oldest is dropped.
MAX_QUEUED_PROGRESS = 16
#: How long a queued reply waits for others, or for the final reply, to be
#: written with, in seconds.
LINGER = 0.002
#: The shortest time between two heartbeats, in seconds.
MIN_HEARTBEAT_INTERVAL = 0.1

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)


@dataclass
class Stats:
    """Counts of the commands an app gave up on, live while it runs."""

    #: Commands whose ``reply_stream`` is no reply stream of the daemon's.
    refused: int = 0
    #: Entries that are no command: not fields, a field missing or invalid.
    malformed: int = 0
    #: Commands whose replies Redis refused for good (a key of another type).
    unwritable: int = 0
    #: Commands of the three kinds above copied to the dead-letter stream.
    dead_lettered: int = 0
    #: Those acknowledged without a copy: Redis refused the dead-letter write.
    dead_letter_failed: int = 0


class _Outbox:
    """A command's ``progress`` and ``heartbeat`` replies on their way to its
    reply stream: written in the background within :data:`LINGER`, or with
    the final reply if that comes first, always in the order they were made."""

    def __init__(self, writer: Any, reply_stream: str, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.reply_stream = reply_stream
        self.request_id = request_id
        self.loop = loop
        self.queued: Deque[Fields] = collections.deque()
        self.lock = asyncio.Lock()
        self.closed = False
        self.flushes: Set["asyncio.Task[None]"] = set()
        #: Loop time of the last reply queued, for heartbeats to skip.
        self.last_queued = loop.time()

    def push(self, fields: Fields) -> None:
        if self.closed:
            return
        if len(self.queued) >= MAX_QUEUED_PROGRESS:
            self.queued.popleft()
            log.debug("%s: progress reports queue up; the oldest is dropped", self.request_id)
        self.queued.append(fields)
        self.last_queued = self.loop.time()
        if len(self.queued) == 1:
            task = self.loop.create_task(self._flush())
            self.flushes.add(task)
            task.add_done_callback(self.flushes.discard)

    def take(self) -> List[Fields]:
        taken = list(self.queued)
        self.queued.clear()
        return taken

    async def take_for_final(self) -> List[Fields]:
        """Holds back background writes (the caller releases ``lock``) and
        takes what is still queued, to be written ahead of the final reply."""
        await self.lock.acquire()
        self.closed = True
        return self.take()

    async def _flush(self) -> None:
        await asyncio.sleep(LINGER)
        async with self.lock:
            replies = self.take()
            if not replies:
                return
            pipe = self.writer.pipeline(transaction=False)
            for fields in replies:
                pipe.xadd(self.reply_stream, dict(fields))
            try:
                await pipe.execute()
            except Exception as e:  # optional replies must not fail the work
                log.warning("%s: could not write a progress reply to %s: %s", self.request_id, self.reply_stream, e)


class _Exchange:
    """What a running handler shares with the runner."""

    def __init__(self, app: "App", command: Command, span: CommandSpan, outbox: _Outbox) -> None:
        self.app = app
        self.command = command
        self.span = span
        self.outbox = outbox

    def progress_fields(self, percent: float) -> Fields:
        try:
            percent = float(percent)
        except (TypeError, ValueError):
            percent = 0.0
        if percent != percent or percent in (float("inf"), float("-inf")):
            percent = 0.0
        percent = min(max(percent, 0.0), 100.0)
        now = self.app._clock.now_ms()
        return reply_fields(self.command, self.span.own, "progress", now, progress=format_number(percent))

    def heartbeat_fields(self) -> Fields:
        return reply_fields(self.command, self.span.own, "heartbeat", self.app._clock.now_ms())


class _BaseContext:
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    @property
    def command(self) -> Command:
        return self._exchange.command

    @property
    def traceparent(self) -> str:
        """The handler's own span context, as its replies carry it."""
        return str(self._exchange.span.own)

    @property
    def stopping(self) -> bool:
        """True once the app is stopping. Long handlers may watch it; the app
        waits for them up to its grace period either way."""
        return self._exchange.app._stopping.is_set()

    def now_ms(self) -> int:
        """Unix time in ms on Redis's clock, as ``deadline_ms`` is."""
        return self._exchange.app._clock.now_ms()


class Context(_BaseContext):
    """What an ``async def`` handler can do besides returning."""

    async def progress(self, percent: float) -> None:
        """Sends a ``progress`` reply (``percent`` clamped to 0..100). It does
        not wait for the write: the reply is written in the background, or
        with the final reply if that comes first, and always ahead of it. A
        failed write is logged, not raised: progress is optional."""
        self._exchange.outbox.push(self._exchange.progress_fields(percent))

    async def wait_stopping(self) -> None:
        """Returns once the app is stopping."""
        await self._exchange.app._stopping.wait()


class SyncContext(_BaseContext):
    """What a plain ``def`` handler, run in a thread, can do besides
    returning. Its methods may be called from that thread."""

    def progress(self, percent: float) -> None:
        """As :meth:`Context.progress`, from the handler's thread."""
        fields = self._exchange.progress_fields(percent)
        try:
            self._exchange.outbox.loop.call_soon_threadsafe(self._exchange.outbox.push, fields)
        except RuntimeError:  # the loop is closed: the app has stopped
            pass


_Tried = Tuple[str, Any]  # ("done", value) | ("refused", error) | ("stopped", None)


class App:
    """A set of handlers sharing one consumer group.

    ``redis`` is a URL, or a redis-py client (asyncio or not) whose settings
    the app copies; by default ``SAGAFLOW_REDIS_URL`` or
    ``redis://127.0.0.1:6379``. The app opens connections of its own: they
    always return bytes, and each blocking read has its own connection with a
    socket timeout longer than its block, whatever the client's is.

    ``redis_mode`` says how that Redis is deployed: ``single``, ``cluster``
    (a Redis Cluster, found from the node given), or ``auto`` (the default,
    else ``SAGAFLOW_REDIS_MODE``), which asks it ``CLUSTER INFO`` once when
    serving starts. A redis-py cluster client given as ``redis`` is a cluster.
    """

    def __init__(
        self,
        group: str,
        redis: RedisLike = None,
        *,
        consumer: Optional[str] = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        reclaim_idle: float = DEFAULT_RECLAIM_IDLE,
        record_ttl: int = DEFAULT_RECORD_TTL,
        reply_stream_prefix: str = DEFAULT_REPLY_STREAM_PREFIX,
        grace: float = DEFAULT_GRACE,
        threads: Optional[int] = None,
        redis_mode: Optional[str] = None,
    ) -> None:
        self.group = group
        self.redis = redis
        parse_redis_mode(redis_mode)
        self.redis_mode = redis_mode
        #: Whether the app serves a Redis Cluster; known once serving.
        self.cluster = False
        self.consumer = consumer or f"consumer-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.max_in_flight = max(1, int(max_in_flight))
        self.reclaim_idle = reclaim_idle
        self.record_ttl = max(1, int(record_ttl))
        self.reply_stream_prefix = reply_stream_prefix
        self.grace = grace
        self.threads = threads
        self.stats = Stats()
        self._routes: Dict[str, Dict[str, Handler]] = {}
        # Made in serve(), on the loop that runs it.
        self._stopping: asyncio.Event = None  # type: ignore[assignment]
        self._clock = RedisClock()
        self._writer: Any = None
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None

    # --- Registration ------------------------------------------------------

    def handler(self, stream: str, event_type: str) -> Callable[[F], F]:
        """Routes commands of ``event_type`` on ``stream`` to the decorated
        function, ``async def f(cmd: Command, ctx: Context)`` or ``def
        f(cmd: Command, ctx: SyncContext)`` (run in a thread pool). It returns
        the step's result (anything JSON can encode), or raises
        :class:`Retryable` or :class:`Fatal`; any other exception is answered
        as a retryable failure."""

        def register(fn: F) -> F:
            self.route(stream, event_type, fn)
            return fn

        return register

    def route(self, stream: str, event_type: str, fn: Handler) -> None:
        self._routes.setdefault(stream, {})[event_type] = fn

    @property
    def streams(self) -> List[str]:
        return sorted(self._routes)

    # --- Running -----------------------------------------------------------

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT, then stops reading and lets the
        commands in flight finish (up to ``grace`` seconds). A second signal
        exits at once."""
        asyncio.run(self._serve_until_signalled())

    async def _serve_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = []

        def on_signal() -> None:
            signals.append(1)
            if len(signals) == 1:
                log.info("stopping: no more reads; finishing the commands in hand")
                stop.set()
            else:
                log.warning("stopping now: a second signal")
                os._exit(130)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await self.serve(stop)

    async def serve(self, stop: Optional[asyncio.Event] = None) -> None:
        """Runs until ``stop`` is set (forever without one), then stops
        reading, waits for the commands in flight up to ``grace`` seconds and
        returns. Redis errors never end it: they are logged and retried with a
        capped backoff."""
        if not self._routes:
            raise ValueError("no handler is registered: use @app.handler(stream, event_type)")
        check_prefix(self.reply_stream_prefix)
        stop = stop or asyncio.Event()
        self._stopping = asyncio.Event()
        self.stats = Stats()
        loop = asyncio.get_running_loop()
        cls, kwargs = connection_settings(self.redis)
        kwargs.setdefault("socket_connect_timeout", 5.0)
        if not kwargs.get("socket_connect_timeout"):
            kwargs["socket_connect_timeout"] = 5.0
        if not kwargs.get("socket_timeout"):
            kwargs["socket_timeout"] = DEFAULT_COMMAND_TIMEOUT
        semaphore = asyncio.Semaphore(self.max_in_flight)
        tasks: Set["asyncio.Task[None]"] = set()
        stopper = loop.create_task(self._relay_stop(stop))
        readers: Dict[str, Any] = {}
        self._writer = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads or min(32, self.max_in_flight), thread_name_prefix="sagaflow-handler"
        )
        try:
            if not await self._resolve_mode(cls, kwargs):
                return
            if self.cluster:
                # A connection per command in flight to each node at most.
                self._writer = open_cluster(cls, kwargs, max_connections=self.max_in_flight + 8)
                for s in self._routes:
                    readers[s] = open_cluster(cls, kwargs, socket_timeout=BLOCK_MS / 1000 + READ_TIMEOUT_MARGIN)
            else:
                self._writer = open_client(cls, kwargs)
                for s in self._routes:
                    readers[s] = open_client(cls, kwargs, socket_timeout=BLOCK_MS / 1000 + READ_TIMEOUT_MARGIN)
            for reader in readers.values():
                getattr(reader, "response_callbacks", {}).pop("XAUTOCLAIM", None)
            await self._first_sync()
            resync = loop.create_task(self._resync())
            log.info("serving %s as %s/%s", ", ".join(self.streams), self.group, self.consumer)
            reading = [
                loop.create_task(_Reader(self, stream, routes, readers[stream], semaphore, tasks).run())
                for stream, routes in self._routes.items()
            ]
            await asyncio.gather(*reading)
            if tasks:
                done, pending = await asyncio.wait(set(tasks), timeout=self.grace)
                if pending:
                    log.warning("%d commands still running after %.1fs; left pending for another instance", len(pending), self.grace)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
            resync.cancel()
            await asyncio.gather(resync, return_exceptions=True)
        finally:
            stopper.cancel()
            self._stopping.set()
            self._executor.shutdown(wait=False)
            for client in [self._writer, *readers.values()]:
                if client is not None:
                    await close_client(client)
            log.info("stopped (%d commands dead-lettered)", self.stats.dead_lettered)

    async def _resolve_mode(self, cls: type, kwargs: Dict[str, Any]) -> bool:
        """Learns whether the Redis is a cluster (see ``redis_mode``), retrying
        while it cannot be reached; False when the app stops first."""
        if is_cluster_client(self.redis):
            self.cluster = True
            return True
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                self.cluster = await cluster_of(cls, kwargs, self.redis_mode)
            except Exception as e:
                if is_permanent(e):
                    raise
                if await self._sleep_or_stop(backoff.failed("ask whether Redis is a cluster", e)):
                    return False
                continue
            backoff.succeeded("ask whether Redis is a cluster")
            if self.cluster:
                log.info("Redis is a cluster: a reply's record, its replies and the acknowledgement are written one after another")
            return True
        return False

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Waits ``seconds``; True when the app is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _first_sync(self) -> None:
        """The first measurement of Redis's clock, before any command is
        read. A Redis that refuses ``TIME`` leaves the host's clock in use."""
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                offset, _ = await self._clock.sync(self._writer)
            except Exception as e:
                if is_permanent(e) or isinstance(e, getattr(rex, "NoPermissionError", ())):
                    log.warning("cannot read Redis's clock (TIME): %s; deadlines are read on this host's clock", e)
                    return
                if await self._sleep_or_stop(backoff.failed("read Redis's clock", e)):
                    return
                continue
            backoff.succeeded("read Redis's clock")
            if abs(offset) >= NOTABLE_OFFSET_MS:
                log.warning("this host's clock is %d ms off Redis's; deadlines are read on Redis's clock", -offset)
            return

    async def _resync(self) -> None:
        while not await self._sleep_or_stop(RESYNC_EVERY):
            try:
                offset, before = await self._clock.sync(self._writer)
            except Exception as e:
                log.debug("cannot read Redis's clock: %s; keeping the last offset", e)
                continue
            if abs(offset - before) >= NOTABLE_OFFSET_MS:
                log.warning("the offset to Redis's clock moved from %d ms to %d ms", before, offset)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[Any]]) -> _Tried:
        """Runs ``op`` until it succeeds or fails for good, backing off between
        transient failures; gives up when the app stops, leaving the entry
        pending."""
        backoff = Backoff()
        while True:
            try:
                value = await op()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if is_permanent(e):
                    return ("refused", e)
                if await self._sleep_or_stop(backoff.failed(what, e)):
                    return ("stopped", None)
                continue
            backoff.succeeded(what)
            return ("done", value)

    # --- One exchange ------------------------------------------------------

    async def _handle_entry(self, stream: str, routes: Dict[str, Handler], entry_id: str, fields: Optional[Dict[bytes, bytes]]) -> None:
        try:
            await self._exchange(stream, routes, entry_id, fields)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug of ours: the entry stays pending
            log.exception("%s %s: left pending after an unexpected error", stream, entry_id)

    async def _exchange(self, stream: str, routes: Dict[str, Handler], entry_id: str, fields: Optional[Dict[bytes, bytes]]) -> None:
        if fields is None:
            return await self._give_up(stream, entry_id, {}, "malformed", "malformed entry: entry was deleted")
        for name in fields:
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                return await self._give_up(stream, entry_id, fields, "malformed", "malformed entry: a field name is not valid UTF-8")
        raw_type = fields.get(b"event_type")
        if raw_type is not None:
            try:
                if raw_type.decode("utf-8") not in routes:
                    log.debug("%s %s: not ours; acknowledged", stream, entry_id)
                    return await self._ack(stream, entry_id)
            except UnicodeDecodeError:
                pass
        try:
            command = Command.from_fields(fields, stream, entry_id)
        except MalformedCommand as e:
            return await self._give_up(stream, entry_id, fields, "malformed", f"malformed command: {e}")
        handler = routes.get(command.event_type)
        if handler is None:
            return await self._ack(stream, entry_id)
        why = refusal(self.reply_stream_prefix, command.reply_stream, command.request_id)
        if why:
            return await self._give_up(stream, entry_id, fields, "refused", f"{why}: {json.dumps(command.reply_stream)}")
        del fields
        if command.deadline_ms < self._clock.now_ms():
            log.info("%s %s: deadline passed; skipped", command.event_type, command.request_id)
            return await self._ack(stream, entry_id)
        span = CommandSpan(command, self.group)
        try:
            await self._answer(stream, handler, command, span)
        finally:
            span.end()

    async def _answer(self, stream: str, handler: Handler, command: Command, span: CommandSpan) -> None:
        """``start``, the handler or the recorded reply, then the final reply,
        its record and the acknowledgement."""
        writer = self._writer
        key = _dead_letter.done_key(self.group, command.request_id)
        start = reply_fields(command, span.own, "start", self._clock.now_ms())

        # The record is read and `start` sent in one round trip (two on a
        # cluster): a command answered before gets `start` again ahead of its
        # replayed reply.
        reading = Batch(self.cluster).add(key, "get", key).add(command.reply_stream, "xadd", command.reply_stream, dict(start))

        async def read_record() -> Any:
            return (await reading.send(writer, transaction=False))[0]

        outcome, value = await self._retrying("read a recorded reply", read_record)
        if outcome == "refused":
            return await self._unwritable(stream, command, "write `start` or read the recorded reply", value)
        if outcome == "stopped":
            return
        recorded = parse_record(value) if value is not None else None
        outbox = _Outbox(writer, command.reply_stream, command.request_id, asyncio.get_running_loop())
        if recorded is not None:
            log.info("%s %s: answered before; replaying the recorded reply", command.event_type, command.request_id)
            final = recorded
        else:
            ran = await self._run_handler(handler, command, span, outbox)
            if ran is None:
                return
            final = ran
        record = record_json(final)
        progress = await outbox.take_for_final()
        finishing = Batch(self.cluster)
        if not self.cluster:
            # The progress still queued, the record, the final reply and the
            # acknowledgement in one MULTI: a crash leaves all of them or none.
            for fields in progress:
                finishing.add(command.reply_stream, "xadd", command.reply_stream, dict(fields))
            finishing.add(key, "set", key, record, ex=self.record_ttl)
        else:
            # Their keys are in different slots: the record, then the replies,
            # then the acknowledgement, each once the one before is written.
            # A crash after the record gets the recorded reply on redelivery;
            # one after the reply sends it twice, which the daemon ignores.
            finishing.add(key, "set", key, record, ex=self.record_ttl)
            for fields in progress:
                finishing.add(command.reply_stream, "xadd", command.reply_stream, dict(fields))
        finishing.add(command.reply_stream, "xadd", command.reply_stream, dict(final))
        finishing.add(stream, "xack", stream, self.group, command.entry_id)
        try:

            async def finish() -> None:
                await finishing.send(writer, transaction=True)

            outcome, value = await self._retrying("send a final reply", finish)
        finally:
            outbox.lock.release()
        if outcome == "refused":
            # Redis ran what it could of the MULTI (or of the runs on a
            # cluster): the record may be in place, the reply is not.
            await self._unwritable(stream, command, "write the final reply", value)

    async def _run_handler(self, handler: Handler, command: Command, span: CommandSpan, outbox: _Outbox) -> Optional[Fields]:
        """The handler, with heartbeats when the command asks for them, then
        the final reply's fields; None when it was cancelled (the entry stays
        pending, unrecorded)."""
        exchange = _Exchange(self, command, span, outbox)
        loop = asyncio.get_running_loop()
        beating = None
        if command.heartbeat_timeout_ms:
            interval = max(command.heartbeat_timeout_ms / 3000, MIN_HEARTBEAT_INTERVAL)
            beating = loop.create_task(_heartbeats(exchange, interval))
        error: Optional[Tuple[str, bool]] = None
        result: Any = None
        try:
            with span.current():
                if inspect.iscoroutinefunction(handler):
                    result = await handler(command, Context(exchange))
                else:
                    context = contextvars.copy_context()
                    result = await loop.run_in_executor(self._executor, context.run, handler, command, SyncContext(exchange))
                    if inspect.isawaitable(result):
                        result = await result
        except asyncio.CancelledError:
            log.info("%s %s: cancelled; left pending", command.event_type, command.request_id)
            return None
        except Retryable as e:
            error = (str(e), True)
        except Fatal as e:
            error = (str(e), False)
        except Exception as e:  # a bug or a passing fault: worth another attempt
            log.warning("%s %s: the handler raised", command.event_type, command.request_id, exc_info=True)
            error = (f"{type(e).__name__}: {e}", True)
        finally:
            if beating is not None:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
        now = self._clock.now_ms()
        if error is None:
            fields = completed_fields(command, span.own, now, result)
        else:
            fields = failed_fields(command, span.own, now, error[0], error[1])
        status = dict(fields)["status"]
        if status == "failed":
            span.failed(dict(fields)["error"])
        log.info("%s %s: %s", command.event_type, command.request_id, status)
        return fields

    async def _ack(self, stream: str, entry_id: str) -> None:
        try:
            await self._writer.xack(stream, self.group, entry_id)
        except Exception as e:  # left pending: taken over at a later start
            log.warning("%s %s: could not acknowledge: %s", stream, entry_id, e)

    async def _unwritable(self, stream: str, command: Command, what: str, error: BaseException) -> None:
        fields = {k.encode(): v.encode() for k, v in command.to_fields().items()}
        await self._give_up(stream, command.entry_id, fields, "unwritable", f"Redis refuses for good to {what}: {error}")

    async def _give_up(self, stream: str, entry_id: str, fields: Dict[bytes, bytes], kind: str, why: str) -> None:
        """Logs and counts a command that can never be answered, then copies it
        to the group's dead-letter stream and acknowledges it in one MULTI (on
        a cluster: the copy, then the acknowledgement, so a crash in between
        copies it twice, never not at all). Should Redis refuse the copy for
        good, it is acknowledged without one."""
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        copy = _dead_letter.entry(stream, entry_id, self.consumer, fields, why)
        log.warning("%s %s: %s, dead-lettered (%s)", stream, entry_id, kind, copy["reason"])
        key = _dead_letter.dead_letter_key(self.group)

        writing = Batch(self.cluster)
        writing.add(key, "xadd", key, copy, maxlen=_dead_letter.DEAD_LETTER_MAXLEN, approximate=True)
        writing.add(stream, "xack", stream, self.group, entry_id)

        async def write() -> None:
            await writing.send(self._writer, transaction=True)

        outcome, error = await self._retrying("dead-letter a command", write)
        if outcome == "done":
            self.stats.dead_lettered += 1
        elif outcome == "refused":
            self.stats.dead_letter_failed += 1
            log.error("%s %s: cannot dead-letter to %s (%s); acknowledged without a copy", stream, entry_id, key, error)
            await self._ack(stream, entry_id)


async def _heartbeats(exchange: _Exchange, interval: float) -> None:
    """A ``heartbeat`` reply every ``interval`` seconds while the handler
    runs, skipped when another reply was queued within the interval."""
    outbox = exchange.outbox
    while True:
        await asyncio.sleep(interval)
        if outbox.loop.time() - outbox.last_queued < interval * 0.999:
            continue
        outbox.push(exchange.heartbeat_fields())


class _Reader:
    """The reading loop of one stream, on a connection of its own so that
    its blocking reads stall nothing else."""

    def __init__(self, app: App, stream: str, routes: Dict[str, Handler], conn: Any, semaphore: asyncio.Semaphore, tasks: Set["asyncio.Task[None]"]) -> None:
        self.app = app
        self.stream = stream
        self.routes = routes
        self.conn = conn
        self.semaphore = semaphore
        self.tasks = tasks
        self.group_ready = False
        self.reclaimed = False

    async def run(self) -> None:
        backoff = Backoff()
        what = f"reading `{self.stream}`"
        while not self.app._stopping.is_set():
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # The group was deleted: made again at `0`, which redelivers
                # old commands; their records and deadlines keep them from
                # running twice.
                if is_nogroup(e):
                    self.group_ready = False
                await self.app._sleep_or_stop(backoff.failed(what, e))
                continue
            backoff.succeeded(what)

    async def step(self) -> None:
        app = self.app
        if not self.group_ready:
            # At `0`, so that commands sent before the first start are handled.
            try:
                await self.conn.xgroup_create(self.stream, app.group, id="0", mkstream=True)
            except rex.ResponseError as e:
                if not is_busygroup(e):
                    raise
            self.group_ready = True
        if not self.reclaimed:
            await self.reclaim()
            self.reclaimed = True
        reply = await self.conn.xreadgroup(app.group, app.consumer, {self.stream: ">"}, count=BATCH, block=BLOCK_MS)
        for _, entries in read_reply(reply):
            await self.dispatch(entries)

    async def reclaim(self) -> None:
        """Takes over the entries a crashed instance of the group left pending."""
        app = self.app
        cursor = "0-0"
        while True:
            # Raw, as redis-py's parsing of this reply differs between its
            # versions (4.2 drops the cursor): [cursor, entries, deleted].
            reply = await self.conn.execute_command(
                "XAUTOCLAIM", self.stream, app.group, app.consumer, int(app.reclaim_idle * 1000), cursor, "COUNT", BATCH
            )
            cursor = as_text(reply[0])
            taken = decode_entries(reply[1])
            if taken:
                log.info("%s: took over %d pending commands", self.stream, len(taken))
            await self.dispatch(taken)
            if cursor in ("0-0", "0"):
                return

    async def dispatch(self, entries: List[Tuple[str, Optional[Dict[bytes, bytes]]]]) -> None:
        """One task per entry. Once read, an entry is ours: waiting for a slot
        ignores the stop, which waits for the tasks holding them anyway."""
        for entry_id, fields in entries:
            await self.semaphore.acquire()
            task = asyncio.get_running_loop().create_task(self.app._handle_entry(self.stream, self.routes, entry_id, fields))
            self.tasks.add(task)

            def done(t: "asyncio.Task[None]") -> None:
                self.tasks.discard(t)
                self.semaphore.release()

            task.add_done_callback(done)
