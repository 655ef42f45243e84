"""Real processes for the reliability tests: sidecars started as operators start them, a backend whose answers
can be slow or streamed, a client-side load generator that counts what clients saw, and the figures table.

Every fault test records one row with :func:`record` (fault, what clients saw, requests failed, grants lost, time
to recover); the rows are printed at the end of the run (``pytest -s`` or the terminal summary) and written to
``$RELIABILITY_FIGURES`` when that is set. The README's Reliability table is copied from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.backends import free_port

CLI = str(Path(sys.executable).parent / "mcp-auth-sidecar")
# A sidecar process starts in about a second; the margin is for a loaded CI machine (2 cores, 5 suites).
START_TIMEOUT_SECONDS = 30.0
# How long one client request of the load generator may take before it counts as failed.
CLIENT_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.05

FIGURES: list[dict[str, object]] = []


def record(fault: str, *, saw: str, failed: int, total: int, grants_lost: int | str, recover_seconds: float) -> None:
    row: dict[str, object] = {
        "fault": fault,
        "clients saw": saw,
        "requests failed": f"{failed} of {total}",
        "grants lost": grants_lost,
        "time to recover": f"{recover_seconds:.1f} s",
    }
    FIGURES.append(row)
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


class Sidecar:
    """One ``mcp-auth-sidecar serve`` process; :meth:`start` may be called again after :meth:`stop`."""

    def __init__(self, upstream: str, env: Mapping[str, str], *, log_dir: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.upstream = upstream
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SIDECAR_")}
        self.env.update({"MCP_SIDECAR_PUBLIC_URL": "https://mcp.example.com", **env})
        self.workers = workers
        self.log = log_dir / f"sidecar-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            CLI, "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--upstream", self.upstream,
            "--workers", str(self.workers),
        ]  # fmt: skip
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )

    async def ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the sidecar exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(_POLL_SECONDS)
        raise AssertionError(f"the sidecar did not become ready:\n{self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc
        return await asyncio.to_thread(proc.wait, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-4000:]
        return ""


@dataclass
class Tally:
    """What the clients of a load run saw."""

    statuses: Counter[str] = field(default_factory=Counter)
    retry_after_missing: int = 0
    first_failure: float | None = None
    last_failure: float | None = None
    latencies: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def count(self, *kinds: str) -> int:
        return sum(n for k, n in self.statuses.items() if k in kinds)

    def failed(self, ok: Sequence[str] = ("200",)) -> int:
        return sum(n for k, n in self.statuses.items() if k not in ok)

    def note(self, kind: str, ok: bool, started: float) -> None:
        now = time.monotonic()
        self.statuses[kind] += 1
        self.latencies.append(now - started)
        if not ok:
            self.first_failure = self.first_failure if self.first_failure is not None else now
            self.last_failure = now

    def summary(self) -> str:
        return ", ".join(f"{k}: {n}" for k, n in sorted(self.statuses.items()))


Request = Callable[[aiohttp.ClientSession], Awaitable[aiohttp.ClientResponse]]


async def load(
    session: aiohttp.ClientSession,
    send: Callable[[aiohttp.ClientSession], Awaitable[tuple[int, Mapping[str, str]]]],
    stop: asyncio.Event,
    *,
    concurrency: int,
    tally: Tally,
    ok: Sequence[int] = (200,),
) -> None:
    """``concurrency`` clients sending back to back until ``stop`` is set; every outcome goes into ``tally``."""

    async def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, headers = await asyncio.wait_for(send(session), CLIENT_TIMEOUT_SECONDS)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                tally.note(type(exc).__name__, False, started)
                continue
            if status == 503 and "Retry-After" not in headers:
                tally.retry_after_missing += 1
            tally.note(str(status), status in ok, started)

    await asyncio.gather(*(client() for _ in range(concurrency)))


def quick_app(routes: Mapping[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    return app
