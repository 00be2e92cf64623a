"""The wire contract of docs/protocol.md: commands as a handler reads them,
replies as it writes them, ids and trace context, and every bound on them.

The bounds are the daemon's and the Rust SDK's (``src/protocol/limits.rs``),
so that a handler written with this package never writes what the daemon
would refuse, and never holds more of a command than the daemon would write.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

# --- Limits (docs/protocol.md "Limits") -------------------------------------

#: Largest command entry a handler reads, field names and values together:
#: the daemon's default payloads hold the input and every earlier result, each
#: at most 1 MiB of text. A larger one is acknowledged without a reply.
MAX_COMMAND_ENTRY_BYTES = 16 << 20
#: Longest ``event_type`` and ``step`` of a command: saga definitions allow no
#: longer names.
MAX_NAME_LEN = 128
#: Longest ``reply_stream`` of a command as read; what is written to is bounded
#: further by :data:`sagaflow._reply_stream.MAX_REPLY_STREAM_BYTES`.
MAX_REPLY_STREAM_LEN = 512
#: Longest correlation id the contract accepts.
MAX_CORRELATION_ID_LEN = 128
#: Largest reply entry the daemon reads: a reply that would be larger is sent
#: as a non-retryable failure naming its size.
MAX_REPLY_ENTRY_BYTES = 1 << 20
#: Longest ``error`` of a ``failed`` reply; a longer one is cut, with a note.
MAX_ERROR_LEN = 4096
#: Deepest JSON nesting of a command's payload: serde_json's limit, which the
#: daemon keeps.
MAX_JSON_DEPTH = 127
#: Longest reason given for refusing a command.
MAX_REASON_LEN = 256

# --- Field names -------------------------------------------------------------

CONTRACT_FIELDS = (
    "correlation_id",
    "saga_id",
    "request_id",
    "traceparent",
    "parent_span_id",
    "event_type",
    "step",
    "kind",
    "attempt",
    "reply_stream",
    "payload",
    "deadline_ms",
    "timestamp",
)

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_UNSIGNED = re.compile(r"^\+?[0-9]+$")
_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


class MalformedCommand(ValueError):
    """A command entry that breaks the contract; its message names the first
    field missing, malformed or over its bound, in at most 256 bytes."""


# --- Ids and trace context ---------------------------------------------------


def new_uuid_hex() -> str:
    """A fresh UUID4 as 32 lowercase hex digits, the contract's form of ids."""
    return uuid.uuid4().hex


def is_uuid_hex(text: str) -> bool:
    return bool(_HEX32.match(text))


#: Namespace of the saga ids the daemon derives from start entries
#: (``SagaId::for_start`` in src/protocol/ids.rs).
START_NAMESPACE = uuid.UUID("7c3e9a1d-52b4-4f0e-9d61-0b8a3f2ce415")


def saga_id_for_start(stream: str, entry_id: str) -> str:
    """The id the daemon gives the saga of start entry ``entry_id`` on
    ``stream``: the bytes of a name-based UUID (v5) of ``"<stream>\\n<id>"``,
    taken as the random bytes of a UUID4 (version and variant bits set), as 32
    lowercase hex digits."""
    digest = bytearray(uuid.uuid5(START_NAMESPACE, f"{stream}\n{entry_id}").bytes)
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return bytes(digest).hex()


@dataclass(frozen=True)
class TraceParent:
    """W3C Trace Context ``00-<trace id>-<span id>-<flags>``."""

    trace_id: str
    span_id: str
    sampled: bool = True

    @staticmethod
    def parse(text: str) -> Optional["TraceParent"]:
        """Version ``00`` must have exactly four parts; a higher version may
        carry more, which are ignored. ``ff`` is invalid, as are ids of zeros."""
        parts = text.split("-")
        if len(parts) < 4:
            return None
        version, trace_id, span_id, flags = parts[:4]
        if not (_HEX32.match(trace_id) and trace_id != "0" * 32):
            return None
        if not (_HEX16.match(span_id) and span_id != "0" * 16):
            return None
        if not _HEX2.match(version) or version == "ff" or not _HEX2.match(flags):
            return None
        if version == "00" and len(parts) > 4:
            return None
        return TraceParent(trace_id, span_id, int(flags, 16) & 1 == 1)

    def child(self, span_id: Optional[str] = None) -> "TraceParent":
        """A span of the same trace, with ``span_id`` or a fresh one."""
        return TraceParent(self.trace_id, span_id or new_span_id(), self.sampled)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def new_span_id() -> str:
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


def check_correlation_id(text: str) -> Optional[str]:
    """Why ``text`` is no correlation id (1 to 128 printable ASCII
    characters, space included), or None."""
    if not text:
        return "correlation_id is empty"
    for at, c in enumerate(text):
        if not (" " <= c <= "~"):
            return f"correlation_id has {_describe_char(c)} at character {at + 1}"
    if len(text) > MAX_CORRELATION_ID_LEN:
        return f"correlation_id is {len(text)} characters long, the limit is {MAX_CORRELATION_ID_LEN}"
    return None


def _describe_char(c: str) -> str:
    if c == "\t":
        return "a tab (0x09)"
    if c in "\r\n":
        return f"a line break (0x{ord(c):02X})"
    if ord(c) < 0x80:
        return f"a control character (0x{ord(c):02X})"
    return f"a non-ASCII character {c!r}"


# --- Text helpers ------------------------------------------------------------


def cut_bytes(text: str, limit: int) -> Tuple[str, bool]:
    """``text`` cut to at most ``limit`` bytes of UTF-8 on a character
    boundary, and whether anything was cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", "ignore"), True


def truncate_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes, ending with a note of its
    full length when it was cut (the daemon's form)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return text
    note = f" [cut: {size} bytes in all]"
    kept, _ = cut_bytes(text, max(limit - len(note), 0))
    return kept + note


def quote(text: str) -> str:
    """At most 64 characters of untrusted text, to quote in a reason."""
    return text if len(text) <= 64 else text[:64] + "..."


def bounded_reason(reason: str) -> str:
    return truncate_text(reason, MAX_REASON_LEN)


def to_json(value: Any) -> str:
    """Compact JSON as the daemon writes it; NaN and infinities are refused
    (``ValueError``), as they are no JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed value, without recursion."""
    deepest = 0
    stack: List[Tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            depth += 1
            stack.extend((v, depth) for v in item.values())
        elif isinstance(item, list):
            depth += 1
            stack.extend((v, depth) for v in item)
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str) -> Any:
    """JSON text nested at most :data:`MAX_JSON_DEPTH` levels."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than the limit of {MAX_JSON_DEPTH} levels") from None
    depth = json_depth(value)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested {depth} levels deep, deeper than the limit of {MAX_JSON_DEPTH} levels")
    return value


def format_number(value: float) -> str:
    """A number as the Rust SDK writes it: ``50``, ``12.5``."""
    if value == int(value):
        return str(int(value))
    return repr(value)


# --- Commands ----------------------------------------------------------------

RawFields = Mapping[bytes, bytes]


@dataclass(frozen=True)
class Command:
    """One command, as the daemon wrote it and the SDK checked it.

    ``payload`` is the parsed JSON input of the step; ``deadline_ms`` is a unix
    time on Redis's clock; ``heartbeat_timeout_ms`` is set only for an attempt
    with a heartbeat timeout (the SDK then sends heartbeats on its own) and
    ``ack_timeout_ms`` only for one with an acknowledgement timeout.
    """

    correlation_id: str
    saga_id: str
    request_id: str
    traceparent: str
    event_type: str
    step: str
    kind: str
    attempt: int
    reply_stream: str
    payload: Any
    deadline_ms: int
    timestamp: int
    heartbeat_timeout_ms: Optional[int] = None
    ack_timeout_ms: Optional[int] = None
    #: The entry id of the command on its stream.
    entry_id: str = ""
    #: The command stream it was read from.
    stream: str = ""

    @property
    def parent(self) -> TraceParent:
        parsed = TraceParent.parse(self.traceparent)
        assert parsed is not None, "checked when read"
        return parsed

    def to_fields(self) -> Dict[str, str]:
        """The entry's fields, in the contract's order."""
        fields = {
            "correlation_id": self.correlation_id,
            "saga_id": self.saga_id,
            "request_id": self.request_id,
            "traceparent": self.traceparent,
            "parent_span_id": self.parent.span_id,
            "event_type": self.event_type,
            "step": self.step,
            "kind": self.kind,
            "attempt": str(self.attempt),
            "reply_stream": self.reply_stream,
            "payload": to_json(self.payload),
            "deadline_ms": str(self.deadline_ms),
            "timestamp": str(self.timestamp),
        }
        if self.heartbeat_timeout_ms is not None:
            fields["heartbeat_timeout_ms"] = str(self.heartbeat_timeout_ms)
        if self.ack_timeout_ms is not None:
            fields["ack_timeout_ms"] = str(self.ack_timeout_ms)
        return fields

    @staticmethod
    def from_fields(fields: RawFields, stream: str = "", entry_id: str = "") -> "Command":
        """Reads a command; raises :class:`MalformedCommand`."""
        try:
            return _read_command(fields, stream, entry_id)
        except MalformedCommand as e:
            raise MalformedCommand(bounded_reason(str(e))) from None


def entry_bytes(fields: RawFields) -> int:
    return sum(len(k) + len(v) for k, v in fields.items())


def text_field(fields: RawFields, name: str) -> Optional[str]:
    """A field as text; None when absent. Raises for a value that is not
    UTF-8."""
    raw = fields.get(name.encode())
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCommand(f"field `{name}` is not UTF-8") from None


def _read_command(fields: RawFields, stream: str, entry_id: str) -> Command:
    size = entry_bytes(fields)
    if size > MAX_COMMAND_ENTRY_BYTES:
        raise MalformedCommand(f"command is {size} bytes, over the limit of {MAX_COMMAND_ENTRY_BYTES} bytes")

    def text(name: str) -> str:
        value = text_field(fields, name)
        if value is None:
            raise MalformedCommand(f"field `{name}` is missing")
        return value

    def bounded(name: str, limit: int) -> str:
        value = text(name)
        length = len(value.encode("utf-8"))
        if length > limit:
            raise MalformedCommand(f"field `{name}` is {length} bytes long, over the limit of {limit}")
        return value

    def number(name: str, limit: int = _U64_MAX) -> int:
        value = text(name)
        if not _UNSIGNED.match(value) or int(value) > limit:
            raise MalformedCommand(f"field `{name}` is not a non-negative integer")
        return int(value)

    def optional_number(name: str) -> Optional[int]:
        return None if text_field(fields, name) is None else number(name)

    traceparent = text("traceparent")
    if TraceParent.parse(traceparent) is None:
        raise MalformedCommand("field `traceparent` is not valid W3C trace context")
    kind = text("kind")
    if kind not in ("action", "compensation"):
        raise MalformedCommand(f"field `kind` is `{quote(kind)}`, expected action or compensation")
    try:
        payload = parse_json(text("payload"))
    except ValueError as e:
        raise MalformedCommand(f"field `payload` is not JSON: {e}") from None
    correlation_id = text("correlation_id")
    why = check_correlation_id(correlation_id)
    if why:
        raise MalformedCommand(why)
    saga_id = text("saga_id")
    if not is_uuid_hex(saga_id):
        raise MalformedCommand("field `saga_id` is not 32 lowercase hex")
    request_id = text("request_id")
    if not is_uuid_hex(request_id):
        raise MalformedCommand("field `request_id` is not 32 lowercase hex")
    event_type = bounded("event_type", MAX_NAME_LEN)
    step = bounded("step", MAX_NAME_LEN)
    attempt = number("attempt", _U32_MAX)
    reply_stream = bounded("reply_stream", MAX_REPLY_STREAM_LEN)
    return Command(
        correlation_id=correlation_id,
        saga_id=saga_id,
        request_id=request_id,
        traceparent=traceparent,
        event_type=event_type,
        step=step,
        kind=kind,
        attempt=attempt,
        reply_stream=reply_stream,
        payload=payload,
        deadline_ms=number("deadline_ms"),
        timestamp=number("timestamp"),
        heartbeat_timeout_ms=optional_number("heartbeat_timeout_ms") or None,
        ack_timeout_ms=optional_number("ack_timeout_ms") or None,
        entry_id=entry_id,
        stream=stream,
    )


# --- Replies -----------------------------------------------------------------

Fields = List[Tuple[str, str]]


def reply_fields(command: Command, own: TraceParent, status: str, timestamp_ms: int, **extra: str) -> Fields:
    """A reply in the contract's form: ids copied from the command, the
    handler's own span, a timestamp on Redis's clock, then ``status`` and its
    fields. ``extra`` holds ``progress``, ``result`` or ``error`` and
    ``retryable``, already as text."""
    out: Fields = [
        ("correlation_id", command.correlation_id),
        ("saga_id", command.saga_id),
        ("request_id", command.request_id),
        ("event_type", command.event_type),
        ("traceparent", str(own)),
        ("parent_span_id", own.span_id),
        ("timestamp", str(timestamp_ms)),
        ("status", status),
    ]
    out.extend(extra.items())
    return out


def failed_fields(command: Command, own: TraceParent, timestamp_ms: int, error: str, retryable: bool) -> Fields:
    """A ``failed`` reply, its error cut to :data:`MAX_ERROR_LEN` bytes."""
    return reply_fields(
        command,
        own,
        "failed",
        timestamp_ms,
        error=truncate_text(error, MAX_ERROR_LEN),
        retryable="true" if retryable else "false",
    )


def completed_fields(command: Command, own: TraceParent, timestamp_ms: int, result: Any) -> Fields:
    """A ``completed`` reply; a result that is no JSON, or that would make
    the reply larger than the daemon reads, is a non-retryable failure."""
    try:
        text = to_json(result)
    except (TypeError, ValueError) as e:
        return failed_fields(command, own, timestamp_ms, f"the result is not JSON: {e}", False)
    fields = reply_fields(command, own, "completed", timestamp_ms, result=text)
    size = fields_bytes(fields)
    if size > MAX_REPLY_ENTRY_BYTES:
        why = f"reply is {size} bytes, over the limit of {MAX_REPLY_ENTRY_BYTES} bytes"
        return failed_fields(command, own, timestamp_ms, why, False)
    return fields


def fields_bytes(fields: Fields) -> int:
    return sum(len(k.encode()) + len(v.encode("utf-8", "surrogatepass")) for k, v in fields)


def record_json(fields: Fields) -> str:
    """Final reply fields as the deduplication record holds them: a JSON
    object of text values, keys sorted, compact, as the Rust SDK writes it,
    so that instances of either SDK in one group replay each other's."""
    return json.dumps(dict(fields), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def parse_record(text: Any) -> Optional[Fields]:
    """A recorded final reply, or None when the record is not one (the Rust
    SDK ignores such records too)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return sorted(value.items())
