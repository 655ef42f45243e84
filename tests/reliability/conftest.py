"""Reliability tests: faults injected into real processes (sidecars, Redis, a backend, an IdP), each recording a
row of the README's Reliability table (see :mod:`tests.reliability.harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.reliability.harness import FIGURES
from tests.support.backends import serve


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def go(app: web.Application) -> TestServer:
        server = await serve(app)
        servers.append(server)
        return server

    yield go
    for server in reversed(servers):
        await server.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    keys = list(FIGURES[0])
    terminalreporter.write_line("| " + " | ".join(keys) + " |")
    terminalreporter.write_line("|" + "---|" * len(keys))
    for row in FIGURES:
        terminalreporter.write_line("| " + " | ".join(str(row[k]) for k in keys) + " |")
