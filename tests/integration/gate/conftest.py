"""Fixtures for the gate's integration tests: backends and a sidecar served the way production serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.metrics import Metrics
from tests.integration.gate.helpers import PUBLIC, RUNNER, SidecarFactory
from tests.support.backends import EchoBackend, serve


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    servers: list[TestServer] = []

    async def go(app: web.Application) -> TestServer:
        server = await serve(app, **RUNNER)
        servers.append(server)
        return server

    yield go
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def echo(start_backend: Callable[[web.Application], Awaitable[TestServer]]) -> tuple[EchoBackend, str]:
    """An echo backend and its base URL."""
    backend = EchoBackend()
    server = await start_backend(backend.app())
    return backend, str(server.make_url("")).rstrip("/")


@pytest.fixture
def start_sidecar(aiohttp_client: Any) -> SidecarFactory:
    """``await start_sidecar(upstream, **settings)``: a test client talking to a sidecar in front of upstream."""

    async def go(
        upstream: str, *, client_kwargs: dict[str, Any] | None = None, **overrides: Any
    ) -> TestClient[Any, Any]:
        values: dict[str, Any] = {"upstream": upstream, "public_url": PUBLIC}
        values.update(overrides)
        app = build_app(Settings(**values), Metrics())
        return await aiohttp_client(await serve(app, **RUNNER), **(client_kwargs or {}))  # type: ignore[no-any-return]

    return go
