"""Fixtures for the authorization server's integration tests: the real oidc-provider-mock behind the strict
IdP front, an unmodified SDK MCP server, a CIMD https server, real Redis (started by the tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from sidecar.store.base import TokenStore
from tests.integration.oauth.flow import Registered, register
from tests.support.mcp_servers import running_mcp_server
from tests.support.oauth_harness import Browser, CimdServer, Sidecar, running_sidecar
from tests.support.oidc import IdPFront, idp_front, oidc_mock  # noqa: F401
from tests.support.redis_servers import redis_url  # noqa: F401


@pytest.fixture(scope="session")
def mcp_backend() -> Iterator[str]:
    """An unmodified SDK server (stateful, SSE) for the whole session; its endpoint is ``<url>/mcp``."""
    with running_mcp_server(stateless=False, json_response=False) as url:
        yield url


@pytest_asyncio.fixture
async def cimd_server() -> AsyncIterator[CimdServer]:
    server = CimdServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# The sidecar under test and its clients. Each test module provides ``store`` (memory or real Redis).


@pytest_asyncio.fixture
async def sidecar(idp_front: IdPFront, store: TokenStore) -> AsyncIterator[Sidecar]:  # noqa: F811 (the fixture imported above)
    async with running_sidecar(idp_front, store=store) as sc:
        yield sc


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest_asyncio.fixture
async def browser(idp_front: IdPFront, sidecar: Sidecar) -> AsyncIterator[Browser]:  # noqa: F811
    async with Browser(idp_front, sidecar.url) as b:
        yield b


@pytest_asyncio.fixture
async def client(http: aiohttp.ClientSession, sidecar: Sidecar) -> Registered:
    return await register(http, sidecar)
