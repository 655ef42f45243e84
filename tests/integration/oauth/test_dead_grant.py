"""A grant the broker declared dead stays dead (issue 13): after the IdP revoked the upstream refresh token
and the proxied path answered 401 (re-authorize), the client's refresh at ``/oauth/token`` is
``invalid_grant``, not 200 with tokens that would only get 401 again (a loop for clients that refresh on
401)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from sidecar.app import METRICS
from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import obtain_code, register, token
from tests.support.oauth_harness import Browser, running_sidecar
from tests.support.oidc import IdPFront

MCP = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


async def test_revoked_upstream_grant_is_invalid_grant_at_the_token_endpoint(idp_front: IdPFront) -> None:
    idp_front.access_token_lifetime = 1
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="dead")
    async with running_sidecar(idp_front, store=store) as sidecar, aiohttp.ClientSession() as http, \
            Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)
        status, body, _ = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
            "redirect_uri": client.redirect_uri})
        assert status == 200 and "refresh_token" in body
        idp_front.revoke_refresh_tokens()  # the user removed the app at the IdP
        await asyncio.sleep(1.1)  # the 1 s upstream access token expires
        async with http.post(sidecar.mcp_url, data=BODY,
                             headers={**MCP, "Authorization": f"Bearer {body['access_token']}"}) as r:
            assert r.status == 401
            assert "re-authorization" in r.headers["WWW-Authenticate"]
        status, answer, _ = await token(http, sidecar, client, {
            "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
        assert status == 400 and answer["error"] == "invalid_grant"
        assert idp_front.refresh_calls == 1  # and the IdP was asked once, not again on every retry


async def test_login_without_upstream_refresh_token_warns_and_ends_cleanly(
    idp_front: IdPFront, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that dropped offline_access: the login is logged as a warning and counted; once the IdP's
    access token expires the proxied path says re-authorize and /oauth/token says invalid_grant (the old
    code logged "login completed" and kept renewing the client's tokens)."""
    idp_front.access_token_lifetime = 1
    idp_front.issue_refresh_token = False
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="dead2")
    async with running_sidecar(idp_front, store=store) as sidecar, aiohttp.ClientSession() as http, \
            Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        with caplog.at_level(logging.WARNING, logger="sidecar.oauth.callback"):
            code = await obtain_code(browser, sidecar, client.client_id)
        assert "without an upstream refresh token" in caplog.text
        assert sidecar.app[METRICS].upstream_logins.labels("no")._value.get() == 1
        status, body, _ = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
            "redirect_uri": client.redirect_uri})
        assert status == 200
        await asyncio.sleep(1.1)
        async with http.post(sidecar.mcp_url, data=BODY,
                             headers={**MCP, "Authorization": f"Bearer {body['access_token']}"}) as r:
            assert r.status == 401
        status, answer, _ = await token(http, sidecar, client, {
            "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
        assert status == 400 and answer["error"] == "invalid_grant"
        assert idp_front.refresh_calls == 0
