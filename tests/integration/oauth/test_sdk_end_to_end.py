"""End to end with the official ``mcp`` SDK client and its OAuth support, driven headlessly.

The client knows only ``<sidecar>/mcp``. Its redirect handler hands the authorization URL to a headless
browser that answers the sidecar's consent page and logs in at the oidc-provider-mock (behind the strict IdP
front); the browser stops at the redirect back to the client and the callback handler returns code, state
and ``iss``. The SDK then walks discovery (RFC 9728 -> RFC 8414), registration (RFC 7591, or a client ID
metadata document served over self-signed https on loopback), authorize, token, and ``initialize``,
``tools/list``, ``tools/call`` reach the unmodified SDK server through the sidecar.

Then the access token expires (the store's clock moves past ``access_token_ttl_seconds`` while the client still
believes the token is good): the next ``tools/list`` gets 401, the SDK re-authorizes and carries on. Finally
the client's own expiry passes: it uses the refresh grant (rotation) and carries on without a login.

Run against the memory store and real Redis, with dynamic registration and with CIMD.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from pydantic import AnyUrl

from sidecar.app import METRICS
from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import TokenStore
from sidecar.store.memory import MemoryTokenStore
from tests.support.oauth_harness import (
    DEFAULT_REDIRECT_URI,
    Browser,
    CimdServer,
    FakeClock,
    MemoryTokenStorage,
    Sidecar,
    query_of,
    running_sidecar,
)
from tests.support.oidc import IdPFront


class HeadlessUser:
    """The SDK's redirect and callback handlers, backed by a :class:`Browser`."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.pending: str | None = None
        self.logins = 0

    async def redirect(self, url: str) -> None:
        self.pending = url

    async def callback(self) -> AuthorizationCodeResult:
        assert self.pending is not None
        url, self.pending = self.pending, None
        final = query_of(await self.browser.login(url))
        self.logins += 1
        return AuthorizationCodeResult(code=final["code"], state=final.get("state"), iss=final.get("iss"))


@asynccontextmanager
async def make_store(kind: str, clock: FakeClock, redis_url: str | None) -> AsyncIterator[TokenStore]:
    if kind == "memory":
        yield MemoryTokenStore(KeyRing.ephemeral(), key_prefix="e2e", clock=clock)
        return
    assert redis_url is not None
    key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    settings = Settings(
        upstream="http://127.0.0.1:9", public_url="http://127.0.0.1:9", store="redis", redis_url=redis_url,
        key_prefix="e2e" + uuid.uuid4().hex[:8], encryption_keys=f"k1:{key}",
    )
    store = open_store(settings, KeyRing.from_setting(f"k1:{key}"), clock=clock)
    try:
        yield store
    finally:
        await store.close()


def count_401(sidecar: Sidecar) -> float:
    value = sidecar.app[METRICS].registry.get_sample_value("mcp_sidecar_requests_total", {"status": "401"})
    return value or 0.0


async def call_tools(session: ClientSession) -> tuple[list[str], str]:
    listed = await session.list_tools()
    result = await session.call_tool("add", {"a": 2, "b": 3})
    text = "".join(getattr(block, "text", "") for block in result.content)
    return sorted(t.name for t in listed.tools), text


@pytest.mark.parametrize("registration", ["dcr", "cimd"])
@pytest.mark.parametrize("store_kind", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_sdk_client_logs_in_uses_tools_and_survives_expiry(
    request: pytest.FixtureRequest,
    idp_front: IdPFront,
    mcp_backend: str,
    cimd_server: CimdServer,
    store_kind: str,
    registration: str,
) -> None:
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    clock = FakeClock()
    client_metadata_url = None
    if registration == "cimd":
        client_metadata_url = cimd_server.client_document("/clients/mcp-e2e.json")
    async with make_store(store_kind, clock, redis_url) as store, running_sidecar(
        idp_front, upstream=mcp_backend, store=store, cimd_ssl=cimd_server.ssl_context
    ) as sidecar, Browser(idp_front, sidecar.url) as browser:
        user = HeadlessUser(browser)
        storage = MemoryTokenStorage()
        provider = OAuthClientProvider(
            server_url=sidecar.mcp_url,
            client_metadata=OAuthClientMetadata(
                redirect_uris=[AnyUrl(DEFAULT_REDIRECT_URI)],
                client_name="SDK end-to-end client",
                token_endpoint_auth_method="none" if registration == "cimd" else None,
            ),
            storage=storage,
            redirect_handler=user.redirect,
            callback_handler=user.callback,
            client_metadata_url=client_metadata_url,
        )
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http, streamable_http_client(
            sidecar.mcp_url, http_client=http
        ) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools, text = await call_tools(session)
            assert tools == ["add", "echo"] and text == "5"
            assert user.logins == 1 and browser.consent_pages == 1
            assert storage.client_info is not None
            if registration == "cimd":
                assert storage.client_info.client_id == client_metadata_url
                assert cimd_server.fetches["/clients/mcp-e2e.json"] >= 1
            else:
                assert storage.client_info.client_id.startswith("mcpc_")
                assert storage.client_info.client_secret  # RFC 7591 default: client_secret_basic
            first = storage.tokens
            assert first is not None and first.refresh_token is not None
            assert first.expires_in is not None and first.expires_in <= 3600

            # The access token expires on the server's clock; the client does not know yet.
            clock.advance(sidecar.settings.access_token_ttl_seconds + 1)
            challenges = count_401(sidecar)
            tools, text = await call_tools(session)  # 401 -> re-authorization -> retried
            assert tools == ["add", "echo"] and text == "5"
            assert count_401(sidecar) == challenges + 1  # tools/list itself was refused once
            assert user.logins == 2
            second = storage.tokens
            assert second is not None and second.access_token != first.access_token

            # The client's own notion of expiry passes: it refreshes (single-use rotation), no login.
            provider.context.token_expiry_time = time.time() - 1
            tools, text = await call_tools(session)
            assert tools == ["add", "echo"] and text == "5"
            assert user.logins == 2
            third = storage.tokens
            assert third is not None and third.access_token != second.access_token
            assert third.refresh_token is not None and third.refresh_token != second.refresh_token


