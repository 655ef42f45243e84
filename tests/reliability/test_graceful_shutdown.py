"""SIGTERM as Kubernetes sends it: unready at once, still serving for ``shutdown_delay_seconds``, then the listener
closes, requests in flight finish, SSE streams end cleanly; workers never outlive their supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.server import STREAM_END_GRACE_SECONDS
from tests.integration.gate.test_serve_process import alive, children_of
from tests.reliability.harness import Sidecar, quick_app, record
from tests.support.jwt_tokens import valid

DELAY, TIMEOUT = 1.5, 2.0
SLOW_SECONDS = 2.5  # started before SIGTERM, still running when the listener closes, done before TIMEOUT ends
AUTH = {"Authorization": f"Bearer {valid()}"}


def backend_app() -> web.Application:
    async def plain(_: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(SLOW_SECONDS)
        return web.json_response({"slow": True})

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        n = 0
        while True:  # an endless stream: only the sidecar's shutdown ends it
            n += 1
            await resp.write(f"id: {n}\ndata: tick\n\n".encode())
            await asyncio.sleep(0.2)

    return quick_app({"/plain": plain, "/slow": slow, "/sse": sse})


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_then_stops(tmp_path: Path, start_backend: object, workers: int) -> None:
    server = await start_backend(backend_app())  # type: ignore[operator]
    env = {"MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": str(DELAY), "MCP_SIDECAR_SHUTDOWN_TIMEOUT_SECONDS": str(TIMEOUT)}
    sidecar = Sidecar(str(server.make_url("")).rstrip("/"), env, log_dir=tmp_path, workers=workers)
    sidecar.start()
    try:
        fresh = aiohttp.TCPConnector(force_close=True)  # each request on a new connection, as after a Service hop
        async with aiohttp.ClientSession(connector=fresh) as session, aiohttp.ClientSession() as streams:
            await sidecar.ready(session)
            stream = await streams.get(sidecar.base + "/sse", headers=AUTH)
            assert stream.status == 200
            first = await stream.content.readuntil(b"\n\n")
            assert first.startswith(b"id: 1")
            slow = asyncio.create_task(session.post(sidecar.base + "/slow", headers=AUTH, data=b"{}"))
            await asyncio.sleep(0.3)  # the slow request reached the backend

            sigterm = time.monotonic()
            sidecar.signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            async with session.get(sidecar.base + "/readyz") as resp:
                assert resp.status == 503, "readiness must fail at once"
                assert (await resp.json())["problems"]["sidecar"] == "starting or shutting down"
            async with session.post(sidecar.base + "/plain", headers=AUTH, data=b"{}") as resp:
                assert resp.status == 200, "requests keep being served during shutdown_delay_seconds"
            assert time.monotonic() - sigterm < DELAY

            await asyncio.sleep(DELAY + 0.4 - (time.monotonic() - sigterm))
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(sidecar.base + "/healthz"):
                    pass  # the listener is closed after the delay

            async with await slow as resp:  # in flight across the close: it finishes normally
                assert resp.status == 200
                assert await resp.json() == {"slow": True}

            # The stream ran on until shutdown_timeout_seconds, then ended cleanly: a complete chunked body
            # (aiohttp raises ClientPayloadError on a truncated one), last event whole, ids to resume from.
            rest = await stream.content.read()
            ended = time.monotonic() - sigterm
            stream.release()
            events = [e for e in (first + rest).split(b"\n\n") if e]
            assert all(e.startswith(b"id: ") and e.endswith(b"data: tick") for e in events), events[-3:]
            assert len(events) >= (DELAY + TIMEOUT) / 0.2 * 0.6, len(events)
            assert DELAY + TIMEOUT - 0.2 <= ended <= DELAY + TIMEOUT + STREAM_END_GRACE_SECONDS, ended
        code = await sidecar.wait(DELAY + TIMEOUT + STREAM_END_GRACE_SECONDS + 10)
        assert code == 0, sidecar.log_text()
        messages = sidecar.log_text()
        assert "ended open streams" in messages
        if workers == 1:
            fault = f"SIGTERM, a request in flight and an SSE stream open (delay {DELAY:g} s, timeout {TIMEOUT:g} s)"
            record(fault,
                   saw=f"/readyz 503 at once; new requests served during the delay; the request in flight 200; "
                       f"the stream ended cleanly after {ended:.1f} s with {len(events)} whole events",
                   failed=0, total=3, grants_lost="n/a", recover_seconds=0.0)  # fmt: skip
    finally:
        sidecar.kill()


async def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path, start_backend: object) -> None:
    server = await start_backend(backend_app())  # type: ignore[operator]
    env = {"MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": "0", "MCP_SIDECAR_SHUTDOWN_TIMEOUT_SECONDS": "1"}
    sidecar = Sidecar(str(server.make_url("")).rstrip("/"), env, log_dir=tmp_path, workers=2)
    sidecar.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            await sidecar.ready(session)
            assert sidecar.proc is not None
            deadline = time.monotonic() + 10
            workers: list[int] = []
            while len(workers) < 2 and time.monotonic() < deadline:
                workers = children_of(sidecar.proc.pid)
                await asyncio.sleep(0.05)
            assert len(workers) == 2
            sidecar.proc.send_signal(signal.SIGKILL)  # no chance to stop its workers itself
            sidecar.proc.wait(5)
            deadline = time.monotonic() + 10
            while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not any(alive(pid) for pid in workers), "a worker outlived its supervisor"
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(sidecar.base + "/healthz"):
                    pass
    finally:
        if sidecar.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sidecar.proc.pid, signal.SIGKILL)  # whatever is left of its process group
        sidecar.kill()
