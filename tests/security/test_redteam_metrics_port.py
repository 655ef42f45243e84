"""Red team: slowloris on the metrics port. It was served by a plain aiohttp runner, which has no request-head
timer: connections that never finish their head stayed open for ever, and they are file descriptors of the same
process that serves the MCP port. The metrics port's runner cuts them off like the main port's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.server import _metrics_runner
from tests.integration.gate.helpers import PUBLIC

TIMEOUT = 0.3


@pytest.fixture
async def metrics_port() -> AsyncIterator[int]:
    settings = Settings(upstream="http://127.0.0.1:9", public_url=PUBLIC, request_header_timeout_seconds=TIMEOUT)
    runner = _metrics_runner(Metrics().registry, settings)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.mark.parametrize("partial", [b"", b"GET /metrics HTTP/1.1\r\n", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
async def test_an_unfinished_head_is_cut_off(metrics_port: int, partial: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
    try:
        writer.write(partial)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20 * TIMEOUT + 5)  # EOF: the sidecar closed it
    finally:
        writer.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


async def test_metrics_are_still_served(metrics_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"mcp_sidecar_requests_total" in answer or b"# HELP" in answer
