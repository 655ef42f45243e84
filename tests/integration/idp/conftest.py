"""Fixtures for the IdP client against the real oidc-provider-mock behind the strict IdP front."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from sidecar.idp import IdPClient
from tests.support.oidc import IdPFront, idp_front, oidc_mock  # noqa: F401

# A hung IdP must fail the request quickly in these tests; the product default is 10 s.
TEST_IDP_TIMEOUT_SECONDS = 0.5


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def client(http: aiohttp.ClientSession, idp_front: IdPFront) -> IdPClient:  # noqa: F811
    return IdPClient(
        http,
        issuer=idp_front.issuer,
        client_id=idp_front.client_id,
        client_secret=idp_front.client_secret,
        timeout=TEST_IDP_TIMEOUT_SECONDS,
    )
