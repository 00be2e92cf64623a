"""The Redis edge: connections of the SDK's own, the split between errors
that may pass and errors that never will, capped backoff, and the decoding of
stream replies in either protocol (RESP2 or RESP3) and either redis-py mode
(bytes or decoded text).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import redis
import redis.asyncio
import redis.asyncio.connection
from redis import exceptions as rex

log = logging.getLogger("sagaflow")

#: The Redis used when none is given and ``SAGAFLOW_REDIS_URL`` is not set.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"

#: The shortest wait between two tries after a transient error.
BACKOFF_MIN = 0.1
#: The longest: a Redis that comes back is used again within this long.
BACKOFF_MAX = 5.0

#: Error codes after which the same call may succeed later: the server is
#: busy, loading, failing over, out of memory, or refuses this client (an ACL
#: or a password an operator can fix). The Rust SDK's list.
TRANSIENT_CODES = frozenset(
    {
        "LOADING",
        "BUSY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MASTERDOWN",
        "READONLY",
        "MOVED",
        "ASK",
        "OOM",
        "NOREPLICAS",
        "MISCONF",
        "NOAUTH",
        "NOPERM",
        "NOSCRIPT",
        "WRONGPASS",
    }
)

# redis-py strips these codes from the message and raises its own classes.
_TRANSIENT_CLASSES: Tuple[type, ...] = tuple(
    cls
    for cls in (
        getattr(rex, name, None)
        for name in (
            "ConnectionError",
            "TimeoutError",
            "NoScriptError",
            "OutOfMemoryError",
            "ReadOnlyError",
            "NoPermissionError",
            "TryAgainError",
            "ClusterDownError",
            "AskError",
            "AuthenticationWrongNumberOfArgsError",
        )
    )
    if isinstance(cls, type)
) + (OSError, asyncio.TimeoutError)

RedisLike = Union[str, "redis.asyncio.Redis", "redis.Redis", None]


def is_permanent(error: BaseException) -> bool:
    """True when a failed call can never succeed as it is, so that trying it
    again only holds up the work behind it: Redis refused the call itself (a
    key of another type, an argument it rejects), or its reply cannot be
    read. Connection failures, timeouts and the codes of a server that is
    busy, failing over or full are transient."""
    if isinstance(error, _TRANSIENT_CLASSES):
        return False
    if isinstance(error, rex.ResponseError):
        text = str(error)
        code = text.split(" ", 1)[0]
        if code in TRANSIENT_CODES or "max number of clients" in text:
            return False
        return True
    return True


def is_busygroup(error: BaseException) -> bool:
    return "BUSYGROUP" in str(error)


def is_nogroup(error: BaseException) -> bool:
    return "NOGROUP" in str(error)


class Backoff:
    """Exponential backoff that logs the first error of a streak and the
    recovery, not every retry."""

    def __init__(self) -> None:
        self.delay: Optional[float] = None

    def failed(self, what: str, error: BaseException) -> float:
        if self.delay is None:
            log.warning("Redis error (%s): %s; retrying with backoff", what, error)
            self.delay = BACKOFF_MIN
        else:
            log.debug("Redis still failing (%s): %s", what, error)
            self.delay = min(self.delay * 2, BACKOFF_MAX)
        return self.delay

    def succeeded(self, what: str) -> None:
        if self.delay is not None:
            log.info("Redis is back (%s)", what)
            self.delay = None


def redis_url(given: Optional[str]) -> str:
    return given or os.environ.get("SAGAFLOW_REDIS_URL") or DEFAULT_REDIS_URL


def connection_settings(given: RedisLike) -> Tuple[type, Dict[str, Any]]:
    """The asyncio connection class and keyword arguments to open connections
    like ``given`` (a URL, or a redis-py client, sync or asyncio), always
    returning bytes: a field that is not UTF-8 is one bad entry, not a
    connection that fails to decode."""
    pool: Any
    if given is None or isinstance(given, str):
        pool = redis.asyncio.ConnectionPool.from_url(redis_url(given))
        cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
    else:
        pool = given.connection_pool
        cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
        if not cls.__module__.startswith("redis.asyncio"):
            # A sync client: the asyncio class of the same name.
            cls = getattr(redis.asyncio.connection, cls.__name__, redis.asyncio.connection.Connection)
    kwargs["decode_responses"] = False
    kwargs.pop("encoding_errors", None)
    return cls, kwargs


def socket_timeout_of(client: Any) -> Optional[float]:
    """The ``socket_timeout`` a redis-py client's connections have, if any."""
    try:
        value = client.connection_pool.connection_kwargs.get("socket_timeout")
    except AttributeError:
        return None
    return float(value) if value else None


def open_client(cls: type, kwargs: Dict[str, Any], **overrides: Any) -> "redis.asyncio.Redis":
    settings = dict(kwargs)
    settings.update(overrides)
    pool = redis.asyncio.ConnectionPool(connection_class=cls, **settings)
    return redis.asyncio.Redis(connection_pool=pool)


async def close_client(client: Any) -> None:
    close = getattr(client, "aclose", None) or getattr(client, "close")
    try:
        await close()
    except Exception:  # closing is best effort
        pass
    try:
        await client.connection_pool.disconnect()
    except Exception:
        pass


# --- Decoding ----------------------------------------------------------------

Entry = Tuple[str, Optional[Dict[bytes, bytes]]]


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return str(value).encode()


def _fields(raw: Any) -> Optional[Dict[bytes, bytes]]:
    if raw is None:
        return None
    if isinstance(raw, dict):
        return {as_bytes(k): as_bytes(v) for k, v in raw.items()}
    items = list(raw)
    return {as_bytes(items[i]): as_bytes(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def entries(raw: Any) -> List[Entry]:
    """``[(id, fields)]`` of a list of entries as redis-py returns them."""
    out: List[Entry] = []
    for item in raw or []:
        if item is None:
            continue
        entry_id, fields = item[0], item[1] if len(item) > 1 else None
        if entry_id is None:
            continue
        out.append((text(entry_id), _fields(fields)))
    return out


def read_reply(raw: Any) -> List[Tuple[str, List[Entry]]]:
    """``[(stream, entries)]`` of an ``XREAD``/``XREADGROUP`` reply: a list of
    pairs (RESP2) or a map (RESP3); None when a block timed out."""
    if not raw:
        return []
    out = []
    if isinstance(raw, dict):
        # RESP3: {stream: [entries]}, one list deeper than RESP2.
        for stream, value in raw.items():
            if value and isinstance(value, list) and isinstance(value[0], list):
                value = value[0]
            out.append((text(stream), entries(value)))
        return out
    for pair in raw:
        out.append((text(pair[0]), entries(pair[1])))
    return out
