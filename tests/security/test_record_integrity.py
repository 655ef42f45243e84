"""Records edited in a real Redis are refused, logged, never trusted (issue 12, item 8).

Whoever can write to Redis (but does not hold the encryption keys) tries to change whose identity a token
carries, or to add a redirect URI to a client. Every such edit makes the record fail to open: the bearer is
401, the client ``invalid_client``, and the store logs the integrity failure. The field-by-field edits run in
the store contract suite on every backend (``tests/support/store_contract.py``); these tests go end to end.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import KeyLayout, TokenStore, parse_client_token
from tests.integration.oauth.flow import Registered, obtain_code, register, token
from tests.support.backends import EchoBackend, serve
from tests.support.oauth_harness import Browser, Sidecar, running_sidecar
from tests.support.oidc import IdPFront
from tests.support.redis_servers import redis_url  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> str:
    return "integrity" + uuid.uuid4().hex[:8]


@pytest_asyncio.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[TokenStore]:  # noqa: F811
    key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    settings = Settings(upstream="http://127.0.0.1:9", public_url="http://127.0.0.1:9", store="redis",
                        redis_url=redis_url, key_prefix=prefix, encryption_keys=f"k1:{key}")
    redis_store = open_store(settings, KeyRing.from_setting(f"k1:{key}"))
    try:
        yield redis_store
    finally:
        await redis_store.close()


@pytest_asyncio.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:  # noqa: F811
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    server = await serve(EchoBackend().app())
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _login(http: aiohttp.ClientSession, sc: Sidecar, browser: Browser, client: Registered) -> dict[str, Any]:
    code = await obtain_code(browser, sc, client.client_id)
    status, body, _ = await token(http, sc, client, {"grant_type": "authorization_code", "code": code.code,
                                                     "code_verifier": code.verifier,
                                                     "redirect_uri": client.redirect_uri})
    assert status == 200, body
    return body


async def _mcp_status(http: aiohttp.ClientSession, sc: Sidecar, access_token: str) -> int:
    async with http.post(sc.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                         headers={"Authorization": f"Bearer {access_token}"}) as r:
        return r.status


async def test_a_grant_given_another_users_identity_is_refused(
    idp_front: IdPFront, store: TokenStore, raw: Redis, prefix: str, upstream: str, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = KeyLayout(prefix)
    async with running_sidecar(idp_front, store=store, upstream=upstream) as sc:
        client = await register(http, sc)
        async with Browser(idp_front, sc.url, sub="attacker@example.com") as attacker_browser:
            attacker = await _login(http, sc, attacker_browser, client)
        async with Browser(idp_front, sc.url, sub="victim@example.com") as victim_browser:
            victim = await _login(http, sc, victim_browser, client)
        assert await _mcp_status(http, sc, attacker["access_token"]) == 200
        attacker_gid = parse_client_token(attacker["access_token"]).grant_id  # type: ignore[union-attr]
        victim_gid = parse_client_token(victim["access_token"]).grant_id  # type: ignore[union-attr]
        # The attacker writes the victim's sealed identity and claims into their own grant ...
        for field in ("idn", "claims"):
            await raw.hset(keys.grant(attacker_gid), field, await raw.hget(keys.grant(victim_gid), field))
        # ... and, for good measure, the plain fields an older format used to trust.
        await raw.hset(keys.grant(attacker_gid), mapping={"sub": "victim@example.com", "cid": client.client_id})
        with caplog.at_level(logging.WARNING, logger="sidecar.store"):
            assert await _mcp_status(http, sc, attacker["access_token"]) == 401
        assert any("integrity" in r.getMessage() for r in caplog.records)
        assert await _mcp_status(http, sc, victim["access_token"]) == 200  # the victim is unaffected


async def test_a_client_given_another_redirect_uri_is_refused(
    idp_front: IdPFront, store: TokenStore, raw: Redis, prefix: str, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = KeyLayout(prefix)
    async with running_sidecar(idp_front, store=store) as sc, Browser(idp_front, sc.url) as browser:
        client = await register(http, sc)
        tokens = await _login(http, sc, browser, client)
        forged = {"v": 1, "client_id": client.client_id, "redirect_uris": ["https://evil.example/cb"],
                  "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"]}
        await raw.set(keys.client(client.client_id), json.dumps(forged), keepttl=True)
        with caplog.at_level(logging.WARNING, logger="sidecar.store"):
            status, body, _ = await token(http, sc, client, {"grant_type": "refresh_token",
                                                             "refresh_token": tokens["refresh_token"]})
        assert (status, body["error"]) == (401, "invalid_client")
        assert any("integrity" in r.getMessage() for r in caplog.records)
        step = await browser.request(
            "GET",
            sc.url + "/oauth/authorize?" + "&".join(f"{k}={v}" for k, v in {
                "response_type": "code", "client_id": client.client_id, "redirect_uri": "https://evil.example/cb",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256",
            }.items()),
            headers={"Accept": "application/json"},
        )
        assert step.status == 400 and "Location" not in step.headers
        assert json.loads(step.text)["error"] == "invalid_client"
