"""The authorization server over plain HTTP: metadata, registration, authorize/consent/callback, token, revoke,
and every negative case of issue 5 with its exact status and error code.

Real pieces: the sidecar app on a loopback port (memory store with a movable clock), the oidc-provider-mock
behind the strict IdP front (PKCE enforced, rotating refresh tokens). The MCP backend is not needed here.
The flows whose atomicity lives in the store (code single use, rotation with replay grace, family revocation,
concurrent refresh, revocation, remembered consent) are marked ``both_stores`` and run on real Redis too (Lua
scripts per hash tag).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.oauth.context import OAUTH
from sidecar.store import open_store
from sidecar.store.base import TokenStore
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import Registered, authorize_url, basic, obtain_code, register, token
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, FakeClock, Sidecar, query_of, running_sidecar
from tests.support.oidc import IdPFront


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Flows marked both_stores run on the memory store and on real Redis; every other test on memory only.
both_stores = pytest.mark.both_stores


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        kinds: list[Any] = ["memory"]
        if metafunc.definition.get_closest_marker("both_stores"):
            kinds.append(pytest.param("redis", marks=pytest.mark.redis))
        metafunc.parametrize("store_kind", kinds)


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, store_kind: str, clock: FakeClock) -> AsyncIterator[TokenStore]:
    if store_kind == "memory":
        yield MemoryTokenStore(KeyRing.ephemeral(), key_prefix="oauthtest", clock=clock)
        return
    redis_url = request.getfixturevalue("redis_url")  # starts a redis-server only for the Redis runs
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




async def redeem(http: aiohttp.ClientSession, sidecar: Sidecar, client: Registered, code: Any) -> dict[str, Any]:
    status, body, headers = await token(
        http, sidecar, client,
        {"grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
         "redirect_uri": client.redirect_uri},
    )
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    return body


# --- one clock --------------------------------------------------------------------------------------------------


async def test_the_handlers_read_the_authorization_servers_clock(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered, clock: FakeClock
) -> None:
    # OAuthState.clock is the handlers' one wall clock: a test moves it and every answer follows.
    sidecar.app[OAUTH].clock = lambda: clock() + 1000
    async with http.post(sidecar.url + "/oauth/register", json={"redirect_uris": [DEFAULT_REDIRECT_URI]}) as r:
        assert abs((await r.json())["client_id_issued_at"] - (clock() + 1000)) <= 2
    code = await obtain_code(browser, sidecar, client.client_id, scope="openid")
    body = await redeem(http, sidecar, client, code)
    assert 2590 <= body["expires_in"] <= 2600  # issued on the store's clock, counted on the handlers'


# --- metadata ---------------------------------------------------------------------------------------------------


async def test_metadata_documents_name_one_issuer(http: aiohttp.ClientSession, sidecar: Sidecar) -> None:
    async with http.get(sidecar.url + "/.well-known/oauth-authorization-server") as r:
        assert r.status == 200
        meta = await r.json()
    async with http.get(sidecar.url + "/.well-known/openid-configuration") as r:
        assert await r.json() == meta
    async with http.get(sidecar.url + "/.well-known/oauth-protected-resource/mcp") as r:
        prm = await r.json()
    assert meta["issuer"] == sidecar.url
    assert prm["authorization_servers"] == [meta["issuer"]]
    assert prm["resource"] == sidecar.url + "/mcp"
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "offline_access" in meta["scopes_supported"]
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["authorization_response_iss_parameter_supported"] is True
    for key in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        assert meta[key].startswith(sidecar.url + "/oauth/")


# --- the happy path and the iss/state of the redirect ----------------------------------------------------------


async def test_code_flow_issues_tokens_with_iss_and_state(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront
) -> None:
    code = await obtain_code(browser, sidecar, client.client_id, scope="openid email")
    assert code.params["state"] == code.state
    assert code.params["iss"] == sidecar.url  # RFC 9207, byte-identical to the metadata's issuer
    assert browser.consent_pages == 1
    upstream = idp_front.authorize_requests[-1]
    assert upstream["code_challenge_method"] == "S256" and upstream["nonce"] and upstream["state"]
    assert upstream["redirect_uri"] == sidecar.url + "/oauth/callback"
    body = await redeem(http, sidecar, client, code)
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid email"
    assert 3590 <= body["expires_in"] <= 3600
    assert body["access_token"].startswith("mcpat_") and body["refresh_token"].startswith("mcprt_")


@both_stores
async def test_consent_is_remembered_per_browser_and_client(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront
) -> None:
    await obtain_code(browser, sidecar, client.client_id)
    await obtain_code(browser, sidecar, client.client_id)
    assert browser.consent_pages == 1  # the second login went straight upstream
    other = await register(http, sidecar)
    await obtain_code(browser, sidecar, other.client_id)
    assert browser.consent_pages == 2  # another client: asked again
    await obtain_code(browser, sidecar, client.client_id, prompt="consent")
    assert browser.consent_pages == 3  # prompt=consent always shows the page
    async with Browser(idp_front, sidecar.url) as stranger:
        await obtain_code(stranger, sidecar, client.client_id)
        assert stranger.consent_pages == 1  # another browser: asked again


async def test_consent_page_is_hardened(sidecar: Sidecar, browser: Browser, client: Registered) -> None:
    step = await browser.get(authorize_url(sidecar, client.client_id, scope="openid email"))
    assert step.status == 200
    assert "frame-ancestors 'none'" in step.headers["Content-Security-Policy"]
    assert step.headers["X-Frame-Options"] == "DENY"
    assert step.headers["Cache-Control"] == "no-store"
    assert "Test Client" in step.text and DEFAULT_REDIRECT_URI in step.text and "email" in step.text
    cookie = step.headers["Set-Cookie"]
    assert cookie.startswith("__Host-mcpsc-consent-")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    assert "Domain" not in cookie
    assert "Location" not in step.headers  # a page without a decision never redirects upstream


async def test_consent_page_escapes_the_client_name(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser
) -> None:
    evil = await register(http, sidecar, client_name='<script>alert(1)</script>"')
    step = await browser.get(authorize_url(sidecar, evil.client_id))
    assert "<script>" not in step.text and "&lt;script&gt;" in step.text


# --- negative cases: exact status and error code ----------------------------------------------------------------


async def test_wrong_pkce_verifier(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                   client: Registered) -> None:
    code = await obtain_code(browser, sidecar, client.client_id)
    status, body, headers = await token(http, sidecar, client, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": "x" * 43,
        "redirect_uri": client.redirect_uri})
    assert (status, body["error"]) == (400, "invalid_grant")
    assert headers["Cache-Control"] == "no-store"


@both_stores
async def test_replayed_code_is_refused_and_revokes_its_tokens(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered, store: MemoryTokenStore
) -> None:
    code = await obtain_code(browser, sidecar, client.client_id)
    first = await redeem(http, sidecar, client, code)
    assert await store.lookup_access_token(first["access_token"]) is not None
    status, body, _ = await token(http, sidecar, client, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": client.redirect_uri})
    assert (status, body["error"]) == (400, "invalid_grant")
    assert await store.lookup_access_token(first["access_token"]) is None  # RFC 6749 §4.1.2: revoked


async def test_mismatched_redirect_uri_at_token(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                                client: Registered) -> None:
    code = await obtain_code(browser, sidecar, client.client_id)
    status, body, _ = await token(http, sidecar, client, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": "http://127.0.0.1:9/other"})
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_mismatched_redirect_uri_at_authorize_is_not_redirected(
    sidecar: Sidecar, browser: Browser, client: Registered
) -> None:
    step = await browser.request("GET", authorize_url(sidecar, client.client_id, redirect_uri="https://evil.example/cb"),
                                 headers={"Accept": "application/json"})
    assert step.status == 400 and "Location" not in step.headers
    assert json.loads(step.text)["error"] == "invalid_request"


async def test_loopback_redirect_may_change_port(sidecar: Sidecar, browser: Browser, client: Registered) -> None:
    code = await obtain_code(browser, sidecar, client.client_id, redirect_uri="http://127.0.0.1:54321/callback")
    assert code.redirect.startswith("http://127.0.0.1:54321/callback?")


async def test_unregistered_client(sidecar: Sidecar, browser: Browser, http: aiohttp.ClientSession) -> None:
    step = await browser.request("GET", authorize_url(sidecar, "mcpc_nobody"), headers={"Accept": "application/json"})
    assert step.status == 400 and "Location" not in step.headers
    assert json.loads(step.text)["error"] == "invalid_client"
    html = await browser.get(authorize_url(sidecar, "mcpc_nobody"))
    assert html.status == 400 and "invalid_client" in html.text
    status, body, headers = await token(http, sidecar, None, {
        "grant_type": "authorization_code", "code": "c", "code_verifier": "v" * 43, "client_id": "mcpc_nobody",
        "redirect_uri": DEFAULT_REDIRECT_URI})
    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")


async def test_wrong_client_secret(http: aiohttp.ClientSession, sidecar: Sidecar, client: Registered) -> None:
    wrong = Registered(client.client_id, "not-the-secret", client.redirect_uri)
    status, body, _ = await token(http, sidecar, wrong, {"grant_type": "refresh_token", "refresh_token": "x"})
    assert (status, body["error"]) == (401, "invalid_client")


@pytest.mark.parametrize("resource", ["https://evil.example/mcp", "http://127.0.0.1:1/mcp", "not a url"])
async def test_bad_resource(sidecar: Sidecar, browser: Browser, client: Registered, resource: str) -> None:
    step = await browser.get(authorize_url(sidecar, client.client_id, resource=resource))
    assert step.status == 302
    params = query_of(step.location)
    assert params["error"] == "invalid_target" and params["state"] == "client-state" and params["iss"] == sidecar.url


async def test_own_resource_is_accepted(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                        client: Registered) -> None:
    code = await obtain_code(browser, sidecar, client.client_id, resource=sidecar.url + "/mcp")
    body = await redeem(http, sidecar, client, code)
    assert body["access_token"]
    status, bad, _ = await token(http, sidecar, client, {
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"], "resource": "https://evil.example"})
    assert (status, bad["error"]) == (400, "invalid_target")


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "openid admin"}, "invalid_scope"),
    ],
)
async def test_authorize_errors_go_back_to_the_client(
    sidecar: Sidecar, browser: Browser, client: Registered, extra: dict[str, Any], error: str
) -> None:
    step = await browser.get(authorize_url(sidecar, client.client_id, **extra))
    assert step.status == 302
    params = query_of(step.location)
    assert params["error"] == error and params["iss"] == sidecar.url and params["state"] == "client-state"


async def test_missing_consent_never_redirects_upstream(
    sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront
) -> None:
    step = await browser.get(authorize_url(sidecar, client.client_id))
    assert step.status == 200 and "Location" not in step.headers
    form = browser.consent_form(step)
    # The form posted without a decision is not consent.
    no_decision = await browser.request("POST", form.action, data=form.fields, headers={"Accept": "application/json"})
    assert (no_decision.status, json.loads(no_decision.text)["error"]) == (400, "invalid_request")
    # An unknown (or already used) consent request is not consent either.
    stale = await browser.request("POST", form.action, data={**form.fields, "decision": "approve"},
                                  headers={"Accept": "application/json"})
    assert (stale.status, json.loads(stale.text)["error"]) == (400, "invalid_request")
    assert idp_front.authorize_requests == []


async def test_forged_consent_csrf_token(sidecar: Sidecar, browser: Browser, client: Registered,
                                         idp_front: IdPFront) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    forged = {**form.fields, "csrf_token": "forged", "decision": "approve"}
    step = await browser.request("POST", form.action, data=forged, headers={"Accept": "application/json"})
    assert (step.status, json.loads(step.text)["error"]) == (403, "access_denied")
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    missing = dict(form.fields)
    del missing["csrf_token"]
    step = await browser.request("POST", form.action, data={**missing, "decision": "approve"},
                                 headers={"Accept": "application/json"})
    assert (step.status, json.loads(step.text)["error"]) == (403, "access_denied")
    assert idp_front.authorize_requests == []


async def test_consent_from_another_browser_or_site(sidecar: Sidecar, browser: Browser, client: Registered,
                                                    idp_front: IdPFront) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    async with Browser(idp_front, sidecar.url) as attacker:  # has the form values, not the victim's cookie
        step = await attacker.answer(form)
        assert step.status == 403
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    cross = await browser.request("POST", form.action, data={**form.fields, "decision": "approve"},
                                  headers={"Origin": "https://evil.example", "Accept": "application/json"})
    assert cross.status == 403 and json.loads(cross.text)["error"] == "access_denied"
    assert idp_front.authorize_requests == []


async def test_consent_denied(sidecar: Sidecar, browser: Browser, client: Registered) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    step = await browser.answer(form, "deny")
    assert step.status == 303
    params = query_of(step.location)
    assert params["error"] == "access_denied" and params["state"] == "client-state"


@both_stores
async def test_refresh_rotation_replay_grace_and_reuse(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered,
    store: MemoryTokenStore, clock: FakeClock,
) -> None:
    first = await redeem(http, sidecar, client, await obtain_code(browser, sidecar, client.client_id))
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    status, second, _ = await token(http, sidecar, client, refresh)
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert second["expires_in"] <= 3600 and second["scope"] == first["scope"]
    status, again, _ = await token(http, sidecar, client, refresh)  # a retry within the grace
    assert status == 200 and again["access_token"] == second["access_token"]
    assert again["refresh_token"] == second["refresh_token"]
    clock.advance(31)  # past refresh_replay_grace_seconds (30)
    status, body, _ = await token(http, sidecar, client, refresh)
    assert (status, body["error"]) == (400, "invalid_grant")
    # The whole family is revoked: the newest pair is dead too.
    assert await store.lookup_access_token(second["access_token"]) is None
    status, body, _ = await token(http, sidecar, client,
                                  {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_refresh_never_widens_scope(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                          client: Registered) -> None:
    first = await redeem(http, sidecar, client,
                         await obtain_code(browser, sidecar, client.client_id, scope="openid"))
    status, body, _ = await token(http, sidecar, client, {
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"], "scope": "openid email"})
    assert (status, body["error"]) == (400, "invalid_scope")


@both_stores
async def test_concurrent_refresh_is_atomic(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                            client: Registered) -> None:
    first = await redeem(http, sidecar, client, await obtain_code(browser, sidecar, client.client_id))
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    results = await asyncio.gather(*(token(http, sidecar, client, refresh) for _ in range(8)))
    assert all(status == 200 for status, _, _ in results)
    assert len({body["access_token"] for _, body, _ in results}) == 1  # one rotation, the rest replays


@both_stores
async def test_revoked_token(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered,
                             store: MemoryTokenStore) -> None:
    tokens = await redeem(http, sidecar, client, await obtain_code(browser, sidecar, client.client_id))
    auth = basic(client)
    async with http.post(sidecar.url + "/oauth/revoke", data={"token": tokens["access_token"]}, headers=auth) as r:
        assert r.status == 200
    assert await store.lookup_access_token(tokens["access_token"]) is None
    async with http.post(sidecar.url + "/oauth/revoke", data={"token": tokens["refresh_token"],
                                                             "token_type_hint": "refresh_token"}, headers=auth) as r:
        assert r.status == 200
    status, body, _ = await token(http, sidecar, client,
                                  {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant")
    async with http.post(sidecar.url + "/oauth/revoke", data={"token": "unknown"}, headers=auth) as r:
        assert r.status == 200  # RFC 7009 §2.2: an invalid token is not an error


async def test_revoking_another_clients_token(http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser,
                                              client: Registered, store: MemoryTokenStore) -> None:
    tokens = await redeem(http, sidecar, client, await obtain_code(browser, sidecar, client.client_id))
    other = await register(http, sidecar)
    auth = basic(other)
    async with http.post(sidecar.url + "/oauth/revoke", data={"token": tokens["access_token"]}, headers=auth) as r:
        assert (r.status, (await r.json())["error"]) == (400, "invalid_grant")
    assert await store.lookup_access_token(tokens["access_token"]) is not None


async def test_idp_callback_with_forged_state(sidecar: Sidecar, browser: Browser, client: Registered) -> None:
    step = await browser.request("GET", sidecar.url + "/oauth/callback?code=abc&state=forged",
                                 headers={"Accept": "application/json"})
    assert (step.status, json.loads(step.text)["error"]) == (400, "invalid_request")
    assert "Location" not in step.headers


async def test_idp_callback_in_another_browser(sidecar: Sidecar, browser: Browser, client: Registered,
                                               idp_front: IdPFront) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    upstream = (await browser.answer(form)).location
    callback = await idp_front.authorize(upstream)
    async with Browser(idp_front, sidecar.url) as victim:  # the login link was sent to someone else
        step = await victim.request("GET", callback, headers={"Accept": "application/json"})
        assert (step.status, json.loads(step.text)["error"]) == (403, "access_denied")


async def test_idp_returning_an_error(sidecar: Sidecar, browser: Browser, client: Registered) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    upstream = query_of((await browser.answer(form)).location)
    step = await browser.get(
        sidecar.url + "/oauth/callback?error=access_denied&error_description=user+said+no%0d%0a&state="
        + upstream["state"]
    )
    assert step.status == 302
    params = query_of(step.location)
    assert params["error"] == "access_denied" and params["state"] == "client-state" and params["iss"] == sidecar.url
    assert "user said no" not in step.location  # the IdP's text is logged, not forwarded


async def test_idp_refusing_the_code_exchange(sidecar: Sidecar, browser: Browser, client: Registered,
                                              idp_front: IdPFront) -> None:
    idp_front.forced_token_error = (400, {"error": "invalid_grant", "error_description": "bad code"})
    final = query_of(await browser.login(authorize_url(sidecar, client.client_id)))
    assert final["error"] == "server_error" and final["state"] == "client-state"


async def test_idp_down_at_the_code_exchange(sidecar: Sidecar, browser: Browser, client: Registered,
                                             idp_front: IdPFront) -> None:
    idp_front.forced_token_error = (503, {"error": "temporarily_unavailable"})
    final = query_of(await browser.login(authorize_url(sidecar, client.client_id)))
    assert final["error"] == "temporarily_unavailable"


async def test_store_failure_at_callback_is_an_error_page(
    sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront, store: MemoryTokenStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.store.base import StoreUnavailable

    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    callback = await idp_front.authorize((await browser.answer(form)).location)

    async def broken(**_: Any) -> Any:
        raise StoreUnavailable("create_grant: ConnectionError")

    monkeypatch.setattr(store, "create_grant", broken)
    step = await browser.get(callback)
    assert step.status == 503 and "Retry-After" in step.headers
    assert "could not be saved" in step.text
    assert not [k for k in store.raw_items() if ":grant" in k]


async def test_rate_limits(idp_front: IdPFront, store: MemoryTokenStore, http: aiohttp.ClientSession) -> None:
    async with running_sidecar(idp_front, store=store, rate_limit_per_minute=2) as sc:
        statuses = []
        for _ in range(3):
            async with http.post(sc.url + "/oauth/register", json={"redirect_uris": [DEFAULT_REDIRECT_URI]}) as r:
                statuses.append(r.status)
                last = (r.headers.get("Retry-After"), await r.json())
        assert statuses == [201, 201, 429]
        assert last[0] is not None and last[1]["error"] == "too_many_requests"
        for path, method in (("/oauth/token", "POST"), ("/oauth/authorize", "GET")):
            got = []
            for _ in range(3):
                async with http.request(method, sc.url + path, headers={"Accept": "application/json"}) as r:
                    got.append(r.status)
            assert got[-1] == 429, (path, got)


async def test_rate_limits_behind_a_trusted_proxy_key_on_the_forwarded_client(
    idp_front: IdPFront, store: MemoryTokenStore, http: aiohttp.ClientSession
) -> None:
    async def register(xff: str) -> int:
        body = {"redirect_uris": [DEFAULT_REDIRECT_URI]}
        async with http.post(sc.url + "/oauth/register", json=body, headers={"X-Forwarded-For": xff}) as r:
            return r.status

    # The test client connects from 127.0.0.1: as a trusted proxy, its X-Forwarded-For names the user.
    async with running_sidecar(
        idp_front, store=store, rate_limit_per_minute=1, trusted_proxies=["127.0.0.0/8"]
    ) as sc:
        assert await register("198.51.100.7") == 201
        assert await register("198.51.100.8") == 201  # another user behind the same ingress: own budget
        assert await register("198.51.100.7") == 429
        # a client-written entry left of the proxy's cannot buy a fresh budget
        assert await register("203.0.113.1, 198.51.100.7") == 429
    # Without trusted_proxies the header is ignored: every request is the peer's.
    async with running_sidecar(idp_front, store=store, rate_limit_per_minute=1) as sc:
        assert await register("198.51.100.9") == 201
        assert await register("198.51.100.10") == 429


async def test_public_url_with_a_path(idp_front: IdPFront, store: MemoryTokenStore,
                                      http: aiohttp.ClientSession) -> None:
    async with running_sidecar(idp_front, store=store, public_path="/team") as sc:
        origin = sc.url.removesuffix("/team")
        # RFC 8414 §3.1 (inserted) and OIDC Discovery §4 (appended) forms, plus an ingress that strips /team.
        for path in ("/.well-known/oauth-authorization-server/team", "/team/.well-known/openid-configuration",
                     "/.well-known/oauth-authorization-server"):
            async with http.get(origin + path) as r:
                assert r.status == 200, path
                meta = await r.json()
                assert meta["issuer"] == sc.url and meta["token_endpoint"] == sc.url + "/oauth/token"
        async with http.get(origin + "/.well-known/oauth-protected-resource/team/mcp") as r:
            assert (await r.json())["authorization_servers"] == [sc.url]
        client = await register(http, sc)
        async with Browser(idp_front, sc.url) as browser:
            code = await obtain_code(browser, sc, client.client_id)
            assert code.params["iss"] == sc.url
        await redeem(http, sc, client, code)


async def test_cors_for_browser_clients(http: aiohttp.ClientSession, sidecar: Sidecar) -> None:
    async with http.options(sidecar.url + "/oauth/token", headers={
        "Origin": "http://localhost:6274", "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(sidecar.url + "/.well-known/oauth-authorization-server") as r:
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_token_request_errors(http: aiohttp.ClientSession, sidecar: Sidecar, client: Registered) -> None:
    cases: list[tuple[dict[str, str], dict[str, str], int, str]] = [
        ({}, basic_headers(client), 400, "invalid_request"),
        ({"grant_type": "password"}, basic_headers(client), 400, "unsupported_grant_type"),
        ({"grant_type": "refresh_token", "refresh_token": "x", "client_secret": "s"}, basic_headers(client), 400,
         "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "x", "client_id": client.client_id}, {}, 401,
         "invalid_client"),
        ({"grant_type": "refresh_token", "refresh_token": "mcpat_" + "0" * 32 + "." + "a" * 43},
         basic_headers(client), 400, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "nope", "code_verifier": "v" * 43,
          "redirect_uri": client.redirect_uri}, basic_headers(client), 400, "invalid_grant"),
        ({"grant_type": "authorization_code", "code": "nope"}, basic_headers(client), 400, "invalid_request"),
    ]
    for form, headers, status, error in cases:
        async with http.post(sidecar.url + "/oauth/token", data=form, headers=headers) as r:
            body = await r.json()
            assert (r.status, body["error"]) == (status, error), form
            assert r.headers["Cache-Control"] == "no-store"
    async with http.post(sidecar.url + "/oauth/token", data="x" * 20_000,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert (r.status, (await r.json())["error"]) == (400, "invalid_request")
    async with http.post(sidecar.url + "/oauth/register", data=b"{" + b" " * 20_000,
                         headers={"Content-Type": "application/json"}) as r:
        assert (r.status, (await r.json())["error"]) == (400, "invalid_client_metadata")


def basic_headers(client: Registered) -> dict[str, str]:
    return basic(client)


async def test_public_and_restricted_clients(http: aiohttp.ClientSession, sidecar: Sidecar,
                                             browser: Browser) -> None:
    public = await register(http, sidecar, token_endpoint_auth_method="none")
    assert public.client_secret is None
    code = await obtain_code(browser, sidecar, public.client_id)
    status, body, _ = await token(http, sidecar, public, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": public.redirect_uri})
    assert status == 200
    status, err, _ = await token(http, sidecar, public, {
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_secret": "guess"})
    assert (status, err["error"]) == (401, "invalid_client")
    code_only = await register(http, sidecar, grant_types=["authorization_code"])
    code = await obtain_code(browser, sidecar, code_only.client_id)
    status, body, _ = await token(http, sidecar, code_only, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": code_only.redirect_uri})
    assert status == 200 and "refresh_token" not in body
    status, err, _ = await token(http, sidecar, code_only, {"grant_type": "refresh_token", "refresh_token": "x"})
    assert (status, err["error"]) == (400, "unauthorized_client")
    # A code issued to one client cannot be redeemed by another.
    code = await obtain_code(browser, sidecar, public.client_id)
    status, err, _ = await token(http, sidecar, code_only, {
        "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
        "redirect_uri": public.redirect_uri})
    assert (status, err["error"]) == (400, "invalid_grant")


async def test_code_store_failure_leaves_no_grant(
    sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront, store: MemoryTokenStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sidecar.store.base import StoreUnavailable

    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    callback = await idp_front.authorize((await browser.answer(form)).location)

    async def broken(*_: Any, **__: Any) -> None:
        raise StoreUnavailable("put_code: TimeoutError")

    monkeypatch.setattr(store, "put_code", broken)
    step = await browser.request("GET", callback, headers={"Accept": "application/json"})
    assert (step.status, json.loads(step.text)["error"]) == (503, "temporarily_unavailable")
    assert step.headers["Retry-After"]
    assert not [k for k in store.raw_items() if k.endswith(":grant")]  # the grant made a moment ago is gone


@both_stores
async def test_strict_grace_zero(idp_front: IdPFront, store: TokenStore, http: aiohttp.ClientSession) -> None:
    """``refresh_replay_grace_seconds: 0`` is strict RFC 9700: the second use of a refresh token revokes all."""
    async with running_sidecar(idp_front, store=store, refresh_replay_grace_seconds=0) as sc, \
            Browser(idp_front, sc.url) as browser:
        client = await register(http, sc)
        first = await redeem(http, sc, client, await obtain_code(browser, sc, client.client_id))
        refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        status, second, _ = await token(http, sc, client, refresh)
        assert status == 200
        status, body, _ = await token(http, sc, client, refresh)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert await store.lookup_access_token(second["access_token"]) is None
