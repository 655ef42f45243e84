"""The MCP server process killed and started again under load: 502 only while it is gone (requests in flight
and those arriving before it listens again), and the sidecar's keep-alive pool recovers by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from tests.reliability.harness import Sidecar, Tally, load, record
from tests.reliability.services import BackendProcess
from tests.support.jwt_tokens import valid


async def test_backend_restart_costs_only_the_requests_in_flight(tmp_path: Path) -> None:
    backend = BackendProcess(delay=0.05)  # requests take a while: some are in flight when it dies
    await backend.start()
    sidecar = Sidecar(backend.url, {"MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": "0"}, log_dir=tmp_path)
    token = valid()
    tally = Tally()
    errors_at: list[tuple[float, str]] = []
    started_at: list[float] = []
    try:
        sidecar.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await sidecar.ready(session)

            async def send(s: aiohttp.ClientSession) -> tuple[int, Mapping[str, str]]:
                began = time.monotonic()
                async with s.post(sidecar.base + "/mcp", data=b"{}", headers={"Authorization": f"Bearer {token}"}) as r:
                    body = await r.read()
                    if r.status != 200:
                        errors_at.append((time.monotonic(), body.decode(errors="replace")))
                        started_at.append(began)
                    return r.status, r.headers

            stop = asyncio.Event()
            clients = asyncio.create_task(load(session, send, stop, concurrency=16, tally=tally))
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            backend.kill()
            await backend.start()  # same port, a new process
            back = time.monotonic()
            await asyncio.sleep(1.5)
            stop.set()
            await clients
    finally:
        sidecar.kill()
        backend.kill()
    failed = tally.failed()
    assert set(tally.statuses) <= {"200", "502"}, tally.summary()  # never a 500, never a hang
    assert failed > 0, tally.summary()  # the fault really hit requests
    # Every 502 falls between the kill and the new process listening (plus slack for a loaded machine).
    assert all(killed <= at <= back + 2.0 for at, _ in errors_at), [round(at - back, 3) for at, _ in errors_at]
    assert all("bad_gateway" in body for _, body in errors_at)
    recovered = (tally.last_failure or back) - killed
    in_flight = sum(1 for began in started_at if began < killed)
    assert in_flight <= 16  # at most one per client: what was running when it died
    saw = f"502 for the {in_flight} in flight and those sent in the {back - killed:.1f} s it took to start, then 200"
    record("MCP server process killed and restarted under load", saw=saw,
           failed=failed, total=tally.total, grants_lost="n/a", recover_seconds=recovered)
    print(f"backend restart: {tally.summary()}, down {back - killed:.2f} s, last 502 {recovered:.2f} s after kill")
