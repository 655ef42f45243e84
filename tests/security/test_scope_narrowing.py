"""A refresh that asks for a narrower scope gets it (issue 12, item 7): the new access token carries only that
scope, in the ``/token`` answer and in what the backend receives through ``{scopes}``. It can never widen:
the narrowing is intersected with the grant's sealed scopes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import obtain_code, register, token
from tests.support.backends import EchoBackend, serve
from tests.support.oauth_harness import Browser, Sidecar, running_sidecar
from tests.support.oidc import IdPFront


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[tuple[EchoBackend, str]]:
    backend = EchoBackend()
    server = await serve(backend.app())
    try:
        yield backend, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _backend_scopes(http: aiohttp.ClientSession, sc: Sidecar, access_token: str, backend: EchoBackend) -> str:
    async with http.post(sc.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                         headers={"Authorization": f"Bearer {access_token}"}) as r:
        assert r.status == 200, await r.text()
    return backend.last.get("X-Scopes") or ""


async def test_narrowed_refresh_carries_the_narrowed_scope(
    idp_front: IdPFront, store: MemoryTokenStore, http: aiohttp.ClientSession, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    async with running_sidecar(idp_front, store=store, upstream=url,
                               inject_headers={"X-Scopes": "{scopes}"}) as sc, Browser(idp_front, sc.url) as browser:
        client = await register(http, sc)
        code = await obtain_code(browser, sc, client.client_id, scope="openid email profile")
        status, first, _ = await token(http, sc, client, {"grant_type": "authorization_code", "code": code.code,
                                                          "code_verifier": code.verifier,
                                                          "redirect_uri": client.redirect_uri})
        assert status == 200 and first["scope"] == "openid email profile"
        assert await _backend_scopes(http, sc, first["access_token"], backend) == "openid email profile"

        status, narrow, _ = await token(http, sc, client, {"grant_type": "refresh_token", "scope": "openid email",
                                                           "refresh_token": first["refresh_token"]})
        assert status == 200, narrow
        assert narrow["scope"] == "openid email"
        assert await _backend_scopes(http, sc, narrow["access_token"], backend) == "openid email"

        # The refresh token keeps the grant's scope: a later refresh without scope gets all of it back.
        status, full, _ = await token(http, sc, client, {"grant_type": "refresh_token",
                                                         "refresh_token": narrow["refresh_token"]})
        assert status == 200 and full["scope"] == "openid email profile"
        assert await _backend_scopes(http, sc, full["access_token"], backend) == "openid email profile"

        # Widening is still refused.
        status, wide, _ = await token(http, sc, client, {"grant_type": "refresh_token", "scope": "openid admin",
                                                         "refresh_token": full["refresh_token"]})
        assert (status, wide["error"]) == (400, "invalid_scope")
