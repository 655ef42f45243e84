"""Fixtures for the authorization server's integration tests: the real oidc-provider-mock behind the strict
IdP front, an unmodified SDK MCP server, a CIMD https server, real Redis (started by the tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.support.mcp_servers import running_mcp_server
from tests.support.oauth_harness import CimdServer
from tests.support.oidc import idp_front, oidc_mock  # noqa: F401
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
