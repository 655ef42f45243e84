"""The broker against panva's ``oidc-provider`` (OpenID Certified, npm 9.x) on the sidecar's DEFAULT settings
(issue 13). The provider is configured like an enterprise IdP: a confidential client with
``client_secret_basic``, PKCE required, rotating refresh tokens (a reused one revokes the grant), short access
tokens, ``offline_access`` only with consent (OIDC Core §11), Ed25519-signed ID tokens.

The IdP's access tokens live 2 s here (20 s in the brief's configuration) so that refresh cycles take
seconds; the sidecar's default 60 s skew is clamped to half of that lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import IDP, METRICS, build_app
from sidecar.config import Settings
from sidecar.idp import IdTokenInvalid
from tests.integration.oauth.flow import obtain_code, register, token
from tests.support.backends import free_port
from tests.support.oauth_harness import Browser, Sidecar
from tests.support.real_tools import OidcProvider, running_oidc_provider
from tests.support.redis_servers import random_prefix, redis_url  # noqa: F401

MCP = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
ACCESS_TTL = 2
# Past the point where the clamped skew (half of ACCESS_TTL) asks for a refresh.
UNTIL_REFRESH = ACCESS_TTL / 2 + 0.2


class Echo:
    def __init__(self) -> None:
        self.auth: list[str] = []
        self.email: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        self.email.append(request.headers.get("X-Forwarded-Email", ""))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})


@pytest.fixture
async def echo(aiohttp_server: Any) -> tuple[Echo, str]:
    e = Echo()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", e.handle)
    server = await aiohttp_server(app)
    return e, str(server.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def sidecar_on(port: int, idp: OidcProvider, upstream: str, **extra: Any) -> AsyncIterator[Sidecar]:
    """A sidecar on the defaults: only what broker mode requires is set."""
    public = f"http://127.0.0.1:{port}"
    settings = Settings.model_validate(
        {"mode": "broker", "upstream": upstream, "public_url": public, "log_format": "text",
         **idp.sidecar_settings(), **extra}
    )
    runner = web.AppRunner(build_app(settings), handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Sidecar(public, runner.app, settings)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def world(upstream: str, replicas: int = 1, **extra: Any) -> AsyncIterator[tuple[OidcProvider, list[Sidecar]]]:
    ports = [free_port() for _ in range(replicas)]
    async with running_oidc_provider([f"http://127.0.0.1:{p}/oauth/callback" for p in ports],
                                     access_ttl=ACCESS_TTL) as idp, contextlib.AsyncExitStack() as stack:
        sidecars = [await stack.enter_async_context(sidecar_on(p, idp, upstream, **extra)) for p in ports]
        yield idp, sidecars


async def login(idp: OidcProvider, sidecar: Sidecar, http: aiohttp.ClientSession) -> tuple[Any, dict[str, Any]]:
    async with Browser(idp, sidecar.url) as browser:  # type: ignore[arg-type]
        client = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)
    status, body, _ = await token(http, sidecar, client, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": client.redirect_uri})
    assert status == 200, body
    return client, body


async def call(http: aiohttp.ClientSession, sidecar: Sidecar, access_token: str) -> int:
    async with http.post(sidecar.mcp_url, data=BODY, headers={**MCP, "Authorization": f"Bearer {access_token}"}) as r:
        return r.status


async def refreshes(idp: OidcProvider) -> tuple[int, int]:
    stats = await idp.stats()
    return int(stats["refresh_success"]), int(stats["refresh_error"])


async def test_login_and_five_refresh_cycles_on_default_settings(echo: tuple[Echo, str]) -> None:
    backend, upstream = echo
    async with world(upstream) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        client, body = await login(idp, sidecar, http)
        assert "refresh_token" in body
        assert sidecar.app[METRICS].upstream_logins.labels("yes")._value.get() == 1  # offline_access honoured
        for _ in range(5):
            assert await call(http, sidecar, body["access_token"]) == 200
            await asyncio.sleep(UNTIL_REFRESH)
        assert await call(http, sidecar, body["access_token"]) == 200
        ok, failed = await refreshes(idp)
        assert ok >= 5 and failed == 0, idp.output
        assert len(set(backend.auth)) == ok + 1  # every cycle forwarded that cycle's fresh IdP token
        # and the client's own refresh still works after all those upstream rotations
        status, renewed, _ = await token(http, sidecar, client, {
            "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
        assert status == 200 and await call(http, sidecar, renewed["access_token"]) == 200


async def test_without_prompt_consent_the_provider_drops_offline_access_and_the_sidecar_says_so(
    echo: tuple[Echo, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's first failure, kept visible: force_consent: false against a strict provider."""
    _, upstream = echo
    async with world(upstream, force_consent=False) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        with caplog.at_level(logging.WARNING, logger="sidecar.oauth.callback"):
            await login(idp, sidecar, http)
        assert "without an upstream refresh token" in caplog.text
        assert sidecar.app[METRICS].upstream_logins.labels("no")._value.get() == 1


async def test_burst_of_20_at_expiry_is_one_refresh(echo: tuple[Echo, str]) -> None:
    _, upstream = echo
    async with world(upstream) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        _, body = await login(idp, sidecar, http)
        for _ in range(2):
            await asyncio.sleep(UNTIL_REFRESH)
            before, _ = await refreshes(idp)
            statuses = await asyncio.gather(*(call(http, sidecar, body["access_token"]) for _ in range(20)))
            assert statuses == [200] * 20
            after, failed = await refreshes(idp)
            assert (after - before, failed) == (1, 0)


@pytest.mark.redis
async def test_two_replicas_on_one_redis_refresh_once_per_expiry(echo: tuple[Echo, str], redis_url: str) -> None:  # noqa: F811
    _, upstream = echo
    shared = {
        "store": "redis", "redis_url": redis_url, "key_prefix": random_prefix(),
        "encryption_keys": "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
    }
    async with world(upstream, replicas=2, **shared) as (idp, [a, b]), aiohttp.ClientSession() as http:
        _, body = await login(idp, a, http)
        for _ in range(2):
            await asyncio.sleep(UNTIL_REFRESH)
            before, _ = await refreshes(idp)
            statuses = await asyncio.gather(*(call(http, s, body["access_token"]) for s in [a, b] * 10))
            assert statuses == [200] * 20
            after, failed = await refreshes(idp)
            assert (after - before, failed) == (1, 0)


async def test_revocation_at_the_idp_is_401_and_no_loop(echo: tuple[Echo, str]) -> None:
    _, upstream = echo
    async with world(upstream) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        client, body = await login(idp, sidecar, http)
        assert await idp.revoke_all() >= 1
        await asyncio.sleep(UNTIL_REFRESH)
        assert await call(http, sidecar, body["access_token"]) == 401
        assert await refreshes(idp) == (0, 1)
        status, answer, _ = await token(http, sidecar, client, {
            "grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
        assert status == 400 and answer["error"] == "invalid_grant"  # not 200 with tokens that get 401
        assert await call(http, sidecar, body["access_token"]) == 401
        assert await refreshes(idp) == (0, 1)  # the IdP is not asked again


async def test_failed_id_token_check_after_rotation_keeps_the_grant(echo: tuple[Echo, str]) -> None:
    """The refresh's new id_token fails verification once (an unknown key while the key-set refetch is
    rate-limited: injected at the IdP client's seam). The provider has already rotated the refresh token; the
    sidecar must have stored the new one, or its next refresh reuses a consumed token and the provider
    revokes the grant."""
    _, upstream = echo
    async with world(upstream) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        _, body = await login(idp, sidecar, http)
        client = sidecar.app[IDP]
        real = client.verify_id_token
        failures = [IdTokenInvalid("no key in the IdP's key set matches the token's kid")]

        async def flaky(id_token: str, nonce: str | None = None) -> dict[str, Any]:
            if nonce is None and failures:
                raise failures.pop()
            return await real(id_token, nonce)

        client.verify_id_token = flaky  # type: ignore[method-assign]
        await asyncio.sleep(UNTIL_REFRESH)
        assert await call(http, sidecar, body["access_token"]) == 200
        assert not failures  # the injected failure happened
        await asyncio.sleep(UNTIL_REFRESH)
        assert await call(http, sidecar, body["access_token"]) == 200
        assert await refreshes(idp) == (2, 0), idp.output


@pytest.mark.parametrize("userinfo", [False, True])
async def test_email_from_userinfo_when_the_id_token_lacks_it(echo: tuple[Echo, str], userinfo: bool) -> None:
    """oidc-provider follows OIDC Core §5.4: with an access token issued, ``email`` is served by the userinfo
    endpoint, not put in the ID token; ``idp_userinfo_claims: true`` fills ``{claims.email}`` from there."""
    backend, upstream = echo
    async with world(upstream, idp_userinfo_claims=userinfo) as (idp, [sidecar]), aiohttp.ClientSession() as http:
        _, body = await login(idp, sidecar, http)
        assert await call(http, sidecar, body["access_token"]) == 200
    assert backend.email == (["alice@example.com"] if userinfo else [""])
