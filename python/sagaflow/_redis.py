"""The Redis edge: connections of the SDK's own, the split between errors
that may pass and errors that never will, capped backoff, and the decoding of
stream replies in either protocol (RESP2 or RESP3) and either redis-py mode
(bytes or decoded text).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from typing import Any, Callable, Coroutine, Dict, List, Optional, Tuple, TypeVar, Union

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

RedisLike = Union[str, "redis.asyncio.Redis", "redis.Redis", Any, None]

T = TypeVar("T")

#: How the Redis behind a URL is deployed: ``auto`` asks it, ``single`` is
#: one server, ``cluster`` a Redis Cluster. The daemon's ``redis_mode``.
REDIS_MODES = ("auto", "single", "cluster")


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


def redis_mode(given: Optional[str]) -> str:
    """The mode asked for: ``given``, else ``SAGAFLOW_REDIS_MODE``, else
    ``auto``. Raises ``ValueError`` for any other word."""
    mode = (given or os.environ.get("SAGAFLOW_REDIS_MODE") or "auto").strip().lower()
    if mode not in REDIS_MODES:
        raise ValueError(f"`{mode}` is no Redis mode; use auto, single or cluster")
    return mode


def is_cluster_client(client: Any) -> bool:
    """True for a redis-py Redis Cluster client, blocking or asyncio."""
    kinds: List[type] = []
    try:
        from redis.cluster import RedisCluster

        kinds.append(RedisCluster)
    except ImportError:  # a redis-py without cluster support
        pass
    try:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

        kinds.append(AsyncRedisCluster)
    except ImportError:
        pass
    return bool(kinds) and isinstance(client, tuple(kinds))


async def is_cluster(mode: str, ask_cluster_info: Callable[[], Any]) -> bool:
    """Whether the Redis is a cluster: the one place that decides, for every
    client of the package. ``single`` and ``cluster`` say so; ``auto`` sends
    ``CLUSTER INFO`` once with ``ask_cluster_info`` (blocking or returning an
    awaitable), as the daemon does (src/connection.rs): a server without
    cluster support refuses it, and a user who may not run it (``NOPERM``)
    is taken to be on one Redis (set ``redis_mode`` to ``cluster`` for such a
    user on a cluster). Any other error is raised."""
    if mode == "single":
        return False
    if mode == "cluster":
        return True
    try:
        reply = ask_cluster_info()
        if inspect.isawaitable(reply):
            await reply
    except rex.ResponseError as e:
        if isinstance(e, getattr(rex, "NoPermissionError", ())) or str(e).startswith("NOPERM"):
            return False
        if "cluster support disabled" in str(e):
            return False
        raise
    return True


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine whose awaits all finish at once (blocking IO)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a blocking call suspended")


def sync_client(url: Optional[str], mode: Optional[str]) -> Any:
    """A blocking redis-py client for ``url`` (default ``SAGAFLOW_REDIS_URL``):
    ``redis.Redis``, or ``redis.cluster.RedisCluster`` on a cluster."""
    url, mode = redis_url(url), redis_mode(mode)
    cluster = mode == "cluster"
    if mode == "auto":
        probe: Any = redis.Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=5.0)
        try:
            cluster = run_blocking(is_cluster(mode, lambda: probe.execute_command("CLUSTER INFO")))
        finally:
            probe.close()
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


async def async_client(url: Optional[str], mode: Optional[str]) -> Any:
    """As :func:`sync_client`, asyncio: ``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``."""
    url = redis_url(url)
    cls, kwargs = connection_settings(url)
    if await cluster_of(cls, kwargs, mode):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url)
    return redis.asyncio.Redis.from_url(url)


async def cluster_of(cls: type, kwargs: Dict[str, Any], mode: Optional[str]) -> bool:
    """Whether the Redis that connections ``cls(**kwargs)`` reach is a cluster."""
    mode = redis_mode(mode)
    if mode != "auto":
        return mode == "cluster"
    probe: Any = open_client(
        cls, kwargs, socket_connect_timeout=kwargs.get("socket_connect_timeout") or 5.0, socket_timeout=kwargs.get("socket_timeout") or 5.0
    )
    try:
        return await is_cluster(mode, lambda: probe.execute_command("CLUSTER INFO"))
    finally:
        await close_client(probe)


def connection_settings(given: RedisLike) -> Tuple[type, Dict[str, Any]]:
    """The asyncio connection class and keyword arguments to open connections
    like ``given`` (a URL, or a redis-py client, sync or asyncio), always
    returning bytes: a field that is not UTF-8 is one bad entry, not a
    connection that fails to decode."""
    pool: Any
    if given is None or isinstance(given, str):
        pool = redis.asyncio.ConnectionPool.from_url(redis_url(given))
        cls, kwargs = pool.connection_class, dict(pool.connection_kwargs)
    elif is_cluster_client(given):
        # A cluster client: the settings of its connections to a node it
        # knows, from which the cluster is found again.
        manager = getattr(given, "nodes_manager", None)
        base = dict(getattr(manager, "connection_kwargs", None) or getattr(given, "connection_kwargs", {}))
        node = given.get_default_node() if hasattr(given, "get_default_node") else None
        if node is not None:
            base["host"], base["port"] = node.host, node.port
        ssl = bool(base.pop("ssl", False)) or "SSL" in getattr(base.get("connection_class"), "__name__", "")
        base.pop("connection_class", None)
        cls = redis.asyncio.connection.SSLConnection if ssl else redis.asyncio.connection.Connection
        kwargs = {k: v for k, v in base.items() if k not in ("response_callbacks", "connection_pool")}
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
        if is_cluster_client(client):
            manager = getattr(client, "nodes_manager", None)
            settings = getattr(manager, "connection_kwargs", None) or getattr(client, "connection_kwargs", {})
            value = settings.get("socket_timeout")
        else:
            value = client.connection_pool.connection_kwargs.get("socket_timeout")
    except AttributeError:
        return None
    return float(value) if value else None


def open_client(cls: type, kwargs: Dict[str, Any], **overrides: Any) -> "redis.asyncio.Redis":
    settings = dict(kwargs)
    settings.update(overrides)
    pool = redis.asyncio.ConnectionPool(connection_class=cls, **settings)
    return redis.asyncio.Redis(connection_pool=pool)


def open_cluster(cls: type, kwargs: Dict[str, Any], **overrides: Any) -> Any:
    """A ``redis.asyncio.cluster.RedisCluster`` found from the node that
    ``cls(**kwargs)`` reaches, with the settings of those connections that a
    cluster client takes (``ssl`` when ``cls`` is an SSL connection)."""
    from redis.asyncio.cluster import RedisCluster

    settings = dict(kwargs)
    settings.update(overrides)
    accepted = inspect.signature(RedisCluster.__init__).parameters
    chosen = {k: v for k, v in settings.items() if k in accepted and k not in ("db", "path", "self")}
    if issubclass(cls, redis.asyncio.connection.SSLConnection):
        chosen["ssl"] = True
    return RedisCluster(**chosen)


async def close_client(client: Any) -> None:
    close = getattr(client, "aclose", None) or getattr(client, "close")
    try:
        await close()
    except Exception:  # closing is best effort
        pass
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a cluster client closes its nodes' connections itself
        return
    try:
        await pool.disconnect()
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
