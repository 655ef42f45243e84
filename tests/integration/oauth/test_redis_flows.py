"""The token-endpoint flows whose atomicity lives in the store (code single use, rotation with replay grace,
family revocation, concurrent refresh, revocation), run again on real Redis (Lua scripts per hash tag)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import TokenStore
from tests.integration.oauth import test_endpoints as flows
from tests.integration.oauth.flow import Registered, register
from tests.support.oauth_harness import Browser, FakeClock, Sidecar, running_sidecar
from tests.support.oidc import IdPFront

pytestmark = pytest.mark.redis


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def store(redis_url: str, clock: FakeClock) -> AsyncIterator[TokenStore]:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    settings = Settings(
        upstream="http://127.0.0.1:9", public_url="http://127.0.0.1:9", store="redis",
        redis_url=redis_url, key_prefix="oauth" + uuid.uuid4().hex[:8], encryption_keys=f"k1:{key}",
    )
    redis_store = open_store(settings, KeyRing.from_setting(f"k1:{key}"), clock=clock)
    try:
        yield redis_store
    finally:
        await redis_store.close()




async def test_rotation_replay_grace_and_reuse(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                               client: Registered, store: Any, clock: FakeClock) -> None:
    await flows.test_refresh_rotation_replay_grace_and_reuse(http, sidecar, browser, client, store, clock)


async def test_concurrent_refresh(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                  client: Registered) -> None:
    await flows.test_concurrent_refresh_is_atomic(http, sidecar, browser, client)


async def test_replayed_code(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered,
                             store: Any) -> None:
    await flows.test_replayed_code_is_refused_and_revokes_its_tokens(http, sidecar, browser, client, store)


async def test_revocation(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered,
                          store: Any) -> None:
    await flows.test_revoked_token(http, sidecar, browser, client, store)


async def test_consent_remembered(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                  client: Registered, idp_front: IdPFront) -> None:
    await flows.test_consent_is_remembered_per_browser_and_client(http, sidecar, browser, client, idp_front)


async def test_strict_grace_zero(idp_front: IdPFront, store: TokenStore, http: aiohttp.ClientSession) -> None:
    """``refresh_replay_grace_seconds: 0`` is strict RFC 9700: the second use of a refresh token revokes all."""
    async with running_sidecar(idp_front, store=store, refresh_replay_grace_seconds=0) as sc, \
            Browser(idp_front, sc.url) as browser:
        client = await register(http, sc)
        first = await flows.redeem(http, sc, client, await flows.obtain_code(browser, sc, client.client_id))
        refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        status, second, _ = await flows.token(http, sc, client, refresh)
        assert status == 200
        status, body, _ = await flows.token(http, sc, client, refresh)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert await store.lookup_access_token(second["access_token"]) is None
