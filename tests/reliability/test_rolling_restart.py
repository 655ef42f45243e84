"""A rolling restart: two sidecar processes behind a readiness-following balancer (what a Service does with its
endpoints), each SIGTERMed and started again in turn under continuous load -> no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from tests.reliability.harness import Sidecar, Tally, load, record
from tests.reliability.services import BackendProcess
from tests.support.jwt_tokens import valid

# The balancer re-reads readiness this often (kube-proxy and ingress controllers take longer, which is what
# shutdown_delay_seconds is for).
PROBE_SECONDS = 0.05
DELAY_SECONDS = 1.0


class Balancer:
    """Sends each request, on a new connection, to a sidecar whose /readyz answered 200 at the last probe."""

    def __init__(self, sidecars: list[Sidecar]) -> None:
        self.sidecars = sidecars
        self.ready: set[int] = set()
        self.stop = asyncio.Event()

    async def probe(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            for i, sc in enumerate(self.sidecars):
                ok = False
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(sc.base + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        ok = r.status == 200
                (self.ready.add if ok else self.ready.discard)(i)
            await asyncio.sleep(PROBE_SECONDS)

    def pick(self) -> Sidecar:
        return self.sidecars[random.choice(sorted(self.ready))]


async def test_rolling_restart_fails_no_request(tmp_path: Path) -> None:
    backend = BackendProcess(delay=0.02)
    await backend.start()
    env = {"MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": str(DELAY_SECONDS), "MCP_SIDECAR_SHUTDOWN_TIMEOUT_SECONDS": "5"}
    sidecars = [Sidecar(backend.url, env, log_dir=tmp_path) for _ in range(2)]
    token = valid()
    tally = Tally()
    try:
        for sc in sidecars:
            sc.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
            for sc in sidecars:
                await sc.ready(session)
            lb = Balancer(sidecars)
            prober = asyncio.create_task(lb.probe(session))
            while len(lb.ready) < 2:
                await asyncio.sleep(PROBE_SECONDS)

            async def send(s: aiohttp.ClientSession) -> tuple[int, Mapping[str, str]]:
                target = lb.pick()
                async with s.post(target.base + "/mcp", data=b"{}", headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    return r.status, r.headers

            stop = asyncio.Event()
            clients = asyncio.create_task(load(session, send, stop, concurrency=8, tally=tally))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            for sc in sidecars:  # one at a time, as a Deployment's RollingUpdate with maxUnavailable 1
                sc.signal(signal.SIGTERM)
                assert await sc.wait(30) == 0, sc.log_text()
                sc.start()
                await sc.ready(session)
                while len(lb.ready) < 2:
                    await asyncio.sleep(PROBE_SECONDS)
            rolled = time.monotonic() - started
            await asyncio.sleep(0.5)
            stop.set()
            await clients
            lb.stop.set()
            await prober
    finally:
        for sc in sidecars:
            sc.kill()
        backend.kill()
    assert tally.total > 200, tally.summary()
    assert tally.failed() == 0, tally.summary()
    record("rolling restart of 2 sidecars under load (SIGTERM, new process)", saw=f"200 only ({tally.total} requests)",
           failed=0, total=tally.total, grants_lost="n/a (gate)", recover_seconds=0.0)
    print(f"rolling restart: {tally.summary()}, both restarted in {rolled:.1f} s")
