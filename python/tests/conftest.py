"""Fixtures: a redis-server of each test's own on a free loopback port, the
real daemon (``SAGAFLOW_BIN``, default ``target/debug/sagaflow`` of the
repository), and handler apps served in a thread of their own. Every wait is
bounded; every process is killed by its pid."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
#: The test operator's key, held by every test daemon.
OPERATOR_KEY = "ops@test:5f1c0e7a9b3d4c2e8f6a1b0c9d8e7f6a"
#: The longest wait for anything in these tests.
WAIT = 10.0

#: The sagas the test daemons load: short timeouts, fast retries.
SAGAS = """
name: order
trigger: order:start
steps:
  - name: reserve
    stream: shop:commands
    timeout: 5s
    compensation:
      command: release
      timeout: 5s
      retry: { max_attempts: 2, backoff: fixed, initial_delay: 50ms }
  - name: charge
    stream: pay:commands
    timeout: 5s
    heartbeat_timeout: 1s
    compensation:
      command: refund
      timeout: 5s
      retry: { max_attempts: 2, backoff: fixed, initial_delay: 50ms }
"""


def sagaflow_bin() -> Path:
    path = Path(os.environ.get("SAGAFLOW_BIN") or "target/debug/sagaflow")
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.fail(f"the daemon binary {path} is missing: `cargo build --bin sagaflow`, or set SAGAFLOW_BIN")
    return path


def wait_until(what: str, check: Callable[[], Any], within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.02)


class RedisServer:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        for _ in range(10):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            assert port != 6379, "never the default Redis port"
            if self._start(port):
                return
        raise RuntimeError("redis-server did not start on any free port")

    def restart(self) -> None:
        """Kills the server and starts an empty one on the same port, as
        after a crash without persistence."""
        self.kill()
        deadline = time.monotonic() + WAIT
        while not self._start(self.port):
            assert time.monotonic() < deadline, f"redis-server did not start again on port {self.port}"
            time.sleep(0.1)

    def _start(self, port: int) -> bool:
        """A redis-server on ``port``, once it answers; False if it does not."""
        process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_timeout=0.5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.ping():
                    self.process, self.port = process, port
                    client.close()
                    return True
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> "redis.Redis":
        return redis.Redis(port=self.port, socket_timeout=WAIT, **kwargs)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="sagaflow-py-redis-") as directory:
        server = RedisServer(directory)
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
def r(redis_server: RedisServer) -> "redis.Redis":
    """A plain connection to the test's Redis, returning text."""
    return redis_server.client(decode_responses=True)


class RedisCluster:
    """A Redis Cluster of three masters without replicas, each a
    redis-server on a free loopback port (its bus port, 10000 higher, free
    too) in a directory of its own, made with ``redis-cli --cluster create``."""

    def __init__(self, directory: str) -> None:
        self.processes: List["subprocess.Popen[bytes]"] = []
        self.ports: List[int] = []
        try:
            while len(self.ports) < 3:
                port = self._free_port()
                node_dir = os.path.join(directory, str(port))
                os.mkdir(node_dir)
                process = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", node_dir, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.processes.append(process)
                node = redis.Redis(port=port, socket_timeout=0.5)
                try:
                    wait_until(f"the cluster node on port {port} answers", lambda: process.poll() is not None or _pings(node), within=5)
                finally:
                    node.close()
                assert process.poll() is None, f"the cluster node on port {port} exited"
                self.ports.append(port)
            created = subprocess.run(
                ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=WAIT,
            )
            assert created.returncode == 0, created.stdout.decode(errors="replace") + created.stderr.decode(errors="replace")
            for port in self.ports:
                node = redis.Redis(port=port, socket_timeout=WAIT, decode_responses=True)
                try:
                    wait_until(f"node {port} says cluster_state:ok", lambda: _cluster_ok(node.execute_command("CLUSTER INFO")))
                finally:
                    node.close()
        except BaseException:
            self.kill()
            raise

    @staticmethod
    def _free_port() -> int:
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port == 6379 or port + 10000 > 65535:
                continue
            try:
                with socket.socket() as bus:
                    bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
        raise RuntimeError("no free port with a free bus port")

    def url(self, node: int = 0) -> str:
        return f"redis://127.0.0.1:{self.ports[node]}"

    def client(self, **kwargs: Any) -> Any:
        """A cluster client of redis-py, returning text."""
        from redis.cluster import RedisCluster as Cluster

        return Cluster(host="127.0.0.1", port=self.ports[0], decode_responses=True, socket_timeout=WAIT, **kwargs)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _cluster_ok(info: Any) -> bool:
    """``cluster_state:ok`` in a reply to ``CLUSTER INFO``, parsed (a dict)
    or not."""
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return "cluster_state:ok" in str(info)


def _pings(node: "redis.Redis") -> bool:
    try:
        return bool(node.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    with tempfile.TemporaryDirectory(prefix="sagaflow-py-cluster-") as directory:
        cluster = RedisCluster(directory)
        try:
            yield cluster
        finally:
            cluster.kill()


class Daemon:
    def __init__(self, url: str, directory: Path, node_id: str) -> None:
        sagas = directory / "sagas"
        sagas.mkdir()
        (sagas / "order.yaml").write_text(SAGAS)
        self.log = directory / f"{node_id}.stderr"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAFLOW_", "OTEL_"))}
        env.update(RUST_LOG="info", SAGAFLOW_OPERATOR_KEYS=OPERATOR_KEY, SAGAFLOW_HTTP_ADDR="none")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(sagaflow_bin()), "run", "--redis-url", url, "--node-id", node_id, "--sagas", str(sagas), "--lease-ttl", "1s"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_until("the daemon starts", lambda: "sagaflow daemon started" in self.stderr() or self.process.poll() is not None)
        assert self.process.poll() is None, f"the daemon exited:\n{self.stderr()}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def daemon(redis_server: RedisServer, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(redis_server.url, tmp_path, "py-test")
    try:
        yield d
    finally:
        d.kill()


class Served:
    """An app served in a thread of its own, with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.stop_event: Optional[asyncio.Event] = None
        self.error: Optional[BaseException] = None
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def serve() -> None:
                self.stop_event = asyncio.Event()
                ready.set()
                await app.serve(self.stop_event)

            try:
                self.loop.run_until_complete(serve())
            except BaseException as e:  # shown by stop()
                self.error = e
                ready.set()
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=main, name="sagaflow-app", daemon=True)
        self.thread.start()
        assert ready.wait(WAIT)

    def stop(self) -> None:
        if self.thread.is_alive() and self.stop_event is not None:
            try:
                self.loop.call_soon_threadsafe(self.stop_event.set)
            except RuntimeError:
                pass
        self.thread.join(WAIT + self.app.grace)
        assert not self.thread.is_alive(), "the app did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def serve() -> Iterator[Callable[[Any], Served]]:
    served: List[Served] = []

    def start(app: Any) -> Served:
        s = Served(app)
        served.append(s)
        return s

    yield start
    for s in served:
        s.stop()


# --- Stream helpers -------------------------------------------------------------


def events_of(r: "redis.Redis", saga_id: str) -> List[Dict[str, Any]]:
    out = []
    for entry_id, fields in r.xrange("saga:events"):
        if fields.get("saga_id") == saga_id:
            fields = dict(fields, payload=json.loads(fields.get("payload") or "null"), id=entry_id)
            out.append(fields)
    return out


def command(
    reply_stream: str,
    event_type: str = "reserve",
    step: str = "reserve",
    payload: Any = None,
    deadline_ms: Optional[int] = None,
    **extra: str,
) -> Dict[str, str]:
    """A command as the daemon writes it."""
    now = int(time.time() * 1000)
    fields = {
        "correlation_id": "test",
        "saga_id": uuid.uuid4().hex,
        "request_id": uuid.uuid4().hex,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "parent_span_id": "b7ad6b7169203331",
        "event_type": event_type,
        "step": step,
        "kind": "action",
        "attempt": "1",
        "reply_stream": reply_stream,
        "payload": json.dumps({} if payload is None else payload),
        "deadline_ms": str(now + 60_000 if deadline_ms is None else deadline_ms),
        "timestamp": str(now),
    }
    fields.update(extra)
    return fields


def replies(r: "redis.Redis", stream: str) -> List[Dict[str, str]]:
    return [fields for _, fields in r.xrange(stream)]


def final_reply(r: "redis.Redis", stream: str, request_id: Optional[str] = None) -> Dict[str, str]:
    def find() -> Optional[Dict[str, str]]:
        for fields in replies(r, stream):
            if fields.get("status") in ("completed", "failed") and (request_id is None or fields["request_id"] == request_id):
                return fields
        return None

    return wait_until(f"a final reply on {stream}", find)


def python_env() -> Dict[str, str]:
    """The environment of a ``python -m sagaflow`` child: this package and
    the tests' handler module importable."""
    env = dict(os.environ)
    paths = [str(REPO / "python"), str(TESTS)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def spawn_handlers(url: str, target: str, log: Path, *args: str, env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[bytes]":
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sagaflow", "run", target, "--redis-url", url, *args],
            env={**python_env(), **(env or {})},
            cwd=str(TESTS),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def pending(r: "redis.Redis", stream: str, group: str) -> int:
    try:
        return int(r.xpending(stream, group)["pending"])
    except redis.ResponseError:
        return 0


Pair = Tuple[str, str]


#: The reply stream a command is sent again with by [`answer_twice`].
REPLAYED_STREAM = "saga:replies:replayed.0a1b2c3d"


def answer_twice(r: Any, url: str, serve: Any, replies_to: str) -> Tuple[Dict[str, str], Dict[str, str], Dict[str, str], List[str]]:
    """Serves a `dedupe` app on `url` whose handler counts its runs, sends it
    one command, then the same command again (as after a daemon's crash,
    with another reply stream of the daemon's), and waits until both are
    answered and acknowledged. Returns the command, the first final reply,
    the replayed one and the request ids the handler ran."""
    from sagaflow import App, Command, Context

    runs: List[str] = []
    app = App("dedupe", url)

    @app.handler("shop:commands", "reserve")
    async def reserve(cmd: Command, ctx: Context) -> Dict[str, Any]:
        runs.append(cmd.request_id)
        await ctx.progress(50)
        return {"reservation": len(runs)}

    serve(app)
    first = command(replies_to, payload={"n": 1})
    r.xadd("shop:commands", first)
    answered = final_reply(r, replies_to)
    again = dict(first, reply_stream=REPLAYED_STREAM)
    r.xadd("shop:commands", again)
    replayed = final_reply(r, again["reply_stream"])
    wait_until("acknowledged", lambda: pending(r, "shop:commands", "dedupe") == 0)
    return first, answered, replayed, runs
