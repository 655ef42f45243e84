"""Real Redis for tests: a standalone ``redis-server``, a master behind a Sentinel, or a 3-master Redis Cluster,
all on free loopback ports.

Nothing here touches a Redis the tests did not start, except when ``REDIS_URL`` is set (then
:func:`redis_url` hands that URL out and tests must confine themselves to their own random key prefix).
Servers run without persistence in a temporary directory and are stopped by the fixtures that started them.

Reuse from any test folder by importing the fixtures into its ``conftest.py``::

    from tests.support.redis_servers import redis_cluster, redis_sentinel, redis_server, redis_url  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
HAVE_REDIS = os.access(REDIS_SERVER, os.X_OK) and os.access(REDIS_CLI, os.X_OK)
NO_REDIS_REASON = "redis-server/redis-cli not installed (make redis-server installs them)"

# How long a freshly started server may take to answer PING; startup takes milliseconds, the margin is for
# a loaded CI machine.
START_TIMEOUT_SECONDS = 15.0
# How long `redis-cli --cluster create` may take to assign slots and have all nodes agree (cluster_state:ok).
CLUSTER_READY_TIMEOUT_SECONDS = 30.0
# Grace for a server to exit on SIGTERM before it is killed.
STOP_TIMEOUT_SECONDS = 5.0
_POLL_SECONDS = 0.02
_PORT_ATTEMPTS = 20


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server start retries if it got taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    """PING over a raw socket: cheaper and more robust than spawning redis-cli in a loop."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on a loopback port; can be stopped and restarted on the same port."""

    def __init__(self, *extra_args: str, port: int | None = None, cluster_port: int | None = None) -> None:
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.config_file: Path | None = None  # set: run as a Sentinel with this config file

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        if self.config_file is not None:
            return [REDIS_SERVER, str(self.config_file), "--sentinel", "--logfile", str(self.dir / "redis.log")]
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster_port is not None:
            argv += ["--cluster-port", str(self.cluster_port)]
        return argv + list(self.extra_args)

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if _answers(self.port):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
            time.sleep(_POLL_SECONDS)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT_SECONDS}s")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "redis.log").read_text(errors="replace")[-500:]
        return "(no log)"


def start_server(*extra_args: str) -> RedisServer:
    """Start a server on a free port, retrying with another port if one was taken meanwhile."""
    last: Exception | None = None
    for _ in range(_PORT_ATTEMPTS):
        server = RedisServer(*extra_args)
        try:
            return server.start()
        except RuntimeError as exc:
            server.cleanup()
            last = exc
    raise RuntimeError(f"could not start redis-server: {last}")


class RedisClusterProcesses:
    """Three cluster-enabled masters on loopback, joined with ``redis-cli --cluster create``."""

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def nodes(self) -> list[str]:
        return [s.address for s in self.servers]

    def cleanup(self) -> None:
        for server in self.servers:
            server.cleanup()


def start_cluster(masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 5000) -> RedisClusterProcesses:
    """``masters`` masters with ``replicas`` replicas each (``redis-cli --cluster create`` assigns them)."""
    servers: list[RedisServer] = []
    try:
        for _ in range(masters * (1 + replicas)):
            server = RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                cluster_port=free_port(),
            )  # fmt: skip
            servers.append(server.start())
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *[s.address for s in servers], "--cluster-replicas", str(replicas),
             "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=CLUSTER_READY_TIMEOUT_SECONDS,
        )  # fmt: skip
        deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_SECONDS
        while not all(_cluster_ok(s.port) for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return RedisClusterProcesses(servers)
    except BaseException:
        for server in servers:
            server.cleanup()
        raise


class RedisSentinelProcesses:
    """A master and one Sentinel monitoring it (quorum 1) on loopback."""

    MASTER_NAME = "mymaster"

    def __init__(self, master: RedisServer, sentinel: RedisServer) -> None:
        self.master = master
        self.sentinel = sentinel

    @property
    def sentinels(self) -> list[str]:
        return [self.sentinel.address]

    def cleanup(self) -> None:
        self.sentinel.cleanup()
        self.master.cleanup()


def start_sentinel() -> RedisSentinelProcesses:
    master = start_server()
    sentinel: RedisServer | None = None
    try:
        sentinel = RedisServer()
        # Sentinel rewrites its config file, so it gets one of its own in its temporary directory.
        conf = sentinel.dir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.dir}\n"
            f"sentinel monitor {RedisSentinelProcesses.MASTER_NAME} 127.0.0.1 {master.port} 1\n"
        )
        sentinel.config_file = conf
        sentinel.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _sentinel_knows_master(sentinel.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the test sentinel does not know its master")
            time.sleep(_POLL_SECONDS)
        return RedisSentinelProcesses(master, sentinel)
    except BaseException:
        if sentinel is not None:
            sentinel.cleanup()
        master.cleanup()
        raise


class ReplicatedSentinel:
    """A master, its replica and three Sentinels (quorum 2) that fail over within about a second."""

    MASTER_NAME = "mymaster"

    def __init__(self, master: RedisServer, replica: RedisServer, sentinels: list[RedisServer]) -> None:
        self.master = master
        self.replica = replica
        self.sentinel_servers = sentinels

    @property
    def sentinels(self) -> list[str]:
        return [s.address for s in self.sentinel_servers]

    def current_master_port(self) -> int | None:
        for sentinel in self.sentinel_servers:
            result = subprocess.run(
                [REDIS_CLI, "-p", str(sentinel.port), "sentinel", "get-master-addr-by-name", self.MASTER_NAME],
                capture_output=True, text=True, timeout=5, check=False,
            )  # fmt: skip
            lines = result.stdout.split()
            if len(lines) == 2 and lines[1].isdigit():
                return int(lines[1])
        return None

    def cleanup(self) -> None:
        for server in (*self.sentinel_servers, self.replica, self.master):
            server.cleanup()


def start_replicated_sentinel(*, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> ReplicatedSentinel:
    master = start_server()
    started: list[RedisServer] = [master]
    try:
        replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
        started.append(replica.start())
        sentinels: list[RedisServer] = []
        for _ in range(3):
            sentinel = RedisServer()
            conf = sentinel.dir / "sentinel.conf"
            name = ReplicatedSentinel.MASTER_NAME
            conf.write_text(
                f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.dir}\n"
                f"sentinel monitor {name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
            sentinel.config_file = conf
            started.append(sentinel.start())
            sentinels.append(sentinel)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not all(_sentinel_sees(s.port, replicas=1, sentinels=2) for s in sentinels):
            if time.monotonic() > deadline:
                raise RuntimeError("the test sentinels do not see the replica and each other")
            time.sleep(0.1)
        return ReplicatedSentinel(master, replica, sentinels)
    except BaseException:
        for server in started:
            server.cleanup()
        raise


def _sentinel_sees(port: int, *, replicas: int, sentinels: int) -> bool:
    result = subprocess.run(
        [REDIS_CLI, "-p", str(port), "sentinel", "master", ReplicatedSentinel.MASTER_NAME],
        capture_output=True, text=True, timeout=5, check=False,
    )  # fmt: skip
    fields = result.stdout.split()
    info = dict(zip(fields[::2], fields[1::2], strict=False))
    return int(info.get("num-slaves", 0)) >= replicas and int(info.get("num-other-sentinels", 0)) >= sentinels


def _sentinel_knows_master(port: int) -> bool:
    result = subprocess.run(
        [REDIS_CLI, "-p", str(port), "sentinel", "get-master-addr-by-name", RedisSentinelProcesses.MASTER_NAME],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return "127.0.0.1" in result.stdout


def _cluster_ok(port: int) -> bool:
    result = subprocess.run(
        [REDIS_CLI, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5, check=False
    )
    return "cluster_state:ok" in result.stdout


def random_prefix() -> str:
    """A key prefix of its own for one test, so it never meets another test's (or anyone's) keys."""
    return "t" + uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------------------------------------
# pytest fixtures


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``REDIS_URL`` if set, else a session-wide redis-server started for the tests."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    server = start_server()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and restart."""
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    server = start_server()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelProcesses]:
    """A session-wide master with one Sentinel in front of it."""
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    processes = start_sentinel()
    try:
        yield processes
    finally:
        processes.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A session-wide 3-master Redis Cluster on loopback."""
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.cleanup()
