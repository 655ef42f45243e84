"""Slowloris: a request head that never completes is cut off after ``request_header_timeout_seconds`` with a 408
(issue 11). aiohttp has no such timer; the sidecar's runner adds it at the protocol level."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.server import _runner
from tests.integration.gate.helpers import PUBLIC
from tests.support.h11_backend import H11Backend

TIMEOUT = 0.3
Start = Callable[[H11Backend], Awaitable[int]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def go(b: H11Backend) -> int:
        settings = Settings(upstream=f"http://127.0.0.1:{b.port}", public_url=PUBLIC,
                            request_header_timeout_seconds=TIMEOUT)
        runner = _runner(build_app(settings, Metrics()), settings)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return runner.addresses[0][1]  # type: ignore[no-any-return]

    yield go
    for r in runners:
        await r.cleanup()


async def _read_all(reader: asyncio.StreamReader, limit: float = 3.0) -> bytes:
    async with asyncio.timeout(limit):
        return await reader.read()


async def test_a_head_trickled_byte_by_byte_is_cut_off(backend: H11Backend, start: Start) -> None:
    port = await start(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()

    async def trickle() -> None:
        for byte in b"GET /mcp HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    trickler = asyncio.create_task(trickle())
    try:
        answer = await _read_all(reader)
    finally:
        trickler.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in answer
    assert time.monotonic() - began < 2.0
    assert backend.requests == []


async def test_a_silent_connection_is_closed(backend: H11Backend, start: Start) -> None:
    port = await start(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408 ")
    finally:
        writer.close()


async def test_a_slow_body_after_a_complete_head_is_not_cut_off(backend: H11Backend, start: Start) -> None:
    port = await start(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 4\r\n"
                     b"Connection: close\r\n\r\nab")
        await asyncio.sleep(TIMEOUT * 2)  # longer than the head timeout: the body is not the head
        writer.write(b"cd")
        answer = await _read_all(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [g.body for g in backend.requests] == [b"abcd"]


async def test_keep_alive_requests_each_get_the_full_timeout(backend: H11Backend, start: Start) -> None:
    port = await start(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):
            await asyncio.sleep(TIMEOUT * 0.6)  # idle between requests is the keep-alive timer's business
            writer.write(b"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_malformed_request_gets_a_json_400(backend: H11Backend, start: Start) -> None:
    port = await start(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nabcd")
        answer = await _read_all(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"application/json" in head
    assert json.loads(body)["error"] == "invalid_request"
    assert backend.requests == []
