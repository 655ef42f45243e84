"""Fixtures for attack tests: an h11-parsed backend and the real sidecar in front of it (the relay, issue 11);
the OAuth integration pieces with a memory store (the front door, issue 12); the gate's echo backend and
production-like sidecar (tool policy bypass attempts, issue 15)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.metrics import Metrics
from sidecar.store.memory import MemoryTokenStore
from tests.integration.gate.conftest import echo, start_backend, start_sidecar  # noqa: F401
from tests.integration.gate.helpers import PUBLIC, RUNNER
from tests.integration.oauth.conftest import browser, cimd_server, client, http, sidecar  # noqa: F401
from tests.support.backends import serve
from tests.support.h11_backend import H11Backend
from tests.support.oauth_harness import FakeClock
from tests.support.oidc import idp_front, oidc_mock  # noqa: F401


@pytest.fixture
async def backend() -> AsyncIterator[H11Backend]:
    b = H11Backend()
    await b.start()
    yield b
    await b.close()


SidecarFor = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def sidecar_for(aiohttp_client: Any) -> SidecarFor:
    """``await sidecar_for(backend, **settings)``: a client of a real sidecar in front of ``backend``."""

    async def go(b: H11Backend, **overrides: Any) -> TestClient[Any, Any]:
        values: dict[str, Any] = {"upstream": f"http://127.0.0.1:{b.port}", "public_url": PUBLIC}
        values.update(overrides)
        server: TestServer = await serve(build_app(Settings(**values), Metrics()), **RUNNER)
        return await aiohttp_client(server)  # type: ignore[no-any-return]

    return go


async def raw_exchange(port: int, data: bytes, *, timeout: float = 3.0, half_close: bool = False) -> bytes:
    """Send raw bytes to the sidecar (then half-close, if asked) and read everything it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks: list[bytes] = []
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    except TimeoutError:
        return b"".join(chunks)
    finally:
        writer.close()


@pytest.fixture
def _sidecars() -> dict[str, Any]:
    """A place for a hypothesis test to keep the sidecar it started on its first example."""
    return {}


# --- the OAuth front door (issue 12) ---
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="sectest", clock=clock)
