"""IdPClient against a scripted fake IdP: what the IdP receives, and what the caller gets back."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
import jwt
import pytest
from aiohttp import web

from sidecar.idp import (
    DEFAULT_EXPIRES_IN_SECONDS,
    DISCOVERY_CACHE_SECONDS,
    DISCOVERY_RETRY_SECONDS,
    IdPClient,
    IdPMisconfigured,
    IdPRejected,
    IdPUnavailable,
    TokenSet,
    basic_authorization,
)

from .conftest import CLIENT_ID, CLIENT_SECRET, TEST_TIMEOUT_SECONDS, FakeIdP

NOW = 1_800_000_000.0


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_client(http: aiohttp.ClientSession, fake: FakeIdP, **kwargs: Any) -> IdPClient:
    kwargs.setdefault("timeout", TEST_TIMEOUT_SECONDS)
    kwargs.setdefault("clock", lambda: NOW)
    return IdPClient(http, issuer=fake.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs)


# --- client authentication (RFC 6749 §2.3.1) ---


async def test_client_secret_basic_form_urlencodes_id_and_secret_before_base64(http, fake_idp):
    client = make_client(http, fake_idp)
    await client.refresh("rt-1")

    seen = fake_idp.token_requests[0]
    scheme, _, credentials = seen.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(credentials).decode().partition(":")
    assert user == "client%3Aid+%C3%A9"
    assert password == "p%40ss+word%2B%2F%3A%25%26%3D"
    assert (unquote_plus(user), unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)
    # One method per request: neither the secret nor the id travel in the body.
    assert seen.form == {"grant_type": "refresh_token", "refresh_token": "rt-1"}


async def test_client_secret_post_sends_credentials_in_the_body_only(http, fake_idp):
    client = make_client(http, fake_idp, token_auth_method="client_secret_post")
    await client.refresh("rt-1", scope="openid email")

    seen = fake_idp.token_requests[0]
    assert "Authorization" not in seen.headers
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.form == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-1",
        "scope": "openid email",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


def test_basic_authorization_of_plain_ascii_is_the_usual_header():
    assert basic_authorization("abc", "def") == "Basic " + base64.b64encode(b"abc:def").decode()


async def test_exchange_code_sends_the_rfc6749_4_1_3_parameters(http, fake_idp):
    client = make_client(http, fake_idp)
    await client.exchange_code("code-1", "https://mcp.example.com/oauth/callback", "verifier-1")
    await client.exchange_code("code-2", "https://mcp.example.com/oauth/callback", None)

    first, second = fake_idp.token_requests
    assert first.form == {
        "grant_type": "authorization_code",
        "code": "code-1",
        "redirect_uri": "https://mcp.example.com/oauth/callback",
        "code_verifier": "verifier-1",
    }
    assert "code_verifier" not in second.form


# --- success responses (RFC 6749 §5.1) ---


async def test_standard_response_is_parsed(http, fake_idp):
    fake_idp.token_answer = (
        200,
        {
            "access_token": "at-1",
            "token_type": "bearer",
            "expires_in": 3599,
            "refresh_token": "rt-2",
            "id_token": "idt-2",
            "scope": "openid email",
        },
        {},
    )
    tokens = await make_client(http, fake_idp).refresh("rt-1")

    assert tokens == TokenSet(
        access_token="at-1",
        token_type="Bearer",
        expires_in=3599,
        expires_at=NOW + 3599,
        expires_in_source="response",
        refresh_token="rt-2",
        id_token="idt-2",
        scope="openid email",
    )


async def test_camel_case_response_is_accepted_with_a_warning(http, fake_idp, caplog):
    fake_idp.token_answer = (
        200,
        {
            "accessToken": "at-camel",
            "tokenType": "Bearer",
            "expiresIn": 120,
            "refreshToken": "rt-camel",
            "idToken": "idt-camel",
        },
        {},
    )
    with caplog.at_level(logging.WARNING, logger="sidecar.idp"):
        tokens = await make_client(http, fake_idp).refresh("rt-1")

    assert (tokens.access_token, tokens.refresh_token, tokens.id_token) == ("at-camel", "rt-camel", "idt-camel")
    assert tokens.expires_in == 120
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("camelCase" in w and "accessToken" in w for w in warnings)
    assert not any("at-camel" in w or "rt-camel" in w for w in warnings)


async def test_missing_refresh_token_is_none_so_the_caller_keeps_its_own(http, fake_idp):
    fake_idp.token_answer = (200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 60}, {})
    tokens = await make_client(http, fake_idp).refresh("rt-1")
    assert tokens.refresh_token is None
    assert tokens.id_token is None


async def test_missing_expires_in_is_taken_from_a_jwt_access_token(http, fake_idp):
    access = jwt.encode({"exp": int(NOW) + 900, "sub": "u"}, "k" * 32, algorithm="HS256")
    fake_idp.token_answer = (200, {"access_token": access, "token_type": "Bearer"}, {})
    tokens = await make_client(http, fake_idp).refresh("rt-1")
    assert (tokens.expires_in, tokens.expires_at, tokens.expires_in_source) == (900, NOW + 900, "jwt")


async def test_missing_expires_in_with_an_opaque_token_uses_the_conservative_default(http, fake_idp):
    fake_idp.token_answer = (200, {"access_token": "opaque", "token_type": "Bearer"}, {})
    tokens = await make_client(http, fake_idp).refresh("rt-1")
    assert tokens.expires_in == DEFAULT_EXPIRES_IN_SECONDS
    assert tokens.expires_at == NOW + DEFAULT_EXPIRES_IN_SECONDS
    assert tokens.expires_in_source == "default"


@pytest.mark.parametrize(("sent", "expected"), [("3599", 3599), (59.7, 59), (-5, 0)])
async def test_expires_in_variants(http, fake_idp, sent, expected):
    fake_idp.token_answer = (200, {"access_token": "a", "token_type": "Bearer", "expires_in": sent}, {})
    tokens = await make_client(http, fake_idp).refresh("rt-1")
    assert tokens.expires_in == expected


async def test_missing_token_type_is_taken_as_bearer(http, fake_idp):
    fake_idp.token_answer = (200, {"access_token": "a", "expires_in": 10}, {})
    tokens = await make_client(http, fake_idp).refresh("rt-1")
    assert tokens.token_type == "Bearer"


@pytest.mark.parametrize(
    "body",
    [
        {"token_type": "Bearer", "expires_in": 10},  # no access_token
        {"access_token": "", "token_type": "Bearer"},
        {"access_token": "a", "token_type": "mac"},  # RFC 6749 §7.1: not understood, not used
        ["not", "an", "object"],
        "<html>not json</html>",
    ],
)
async def test_unusable_success_bodies_are_unavailable(http, fake_idp, body):
    fake_idp.token_answer = (200, body, {})
    with pytest.raises(IdPUnavailable):
        await make_client(http, fake_idp).refresh("rt-1")


# --- error responses (RFC 6749 §5.2) ---


@pytest.mark.parametrize(
    ("status", "error", "drops"),
    [
        (400, "invalid_grant", True),
        (401, "invalid_client", True),
        (400, "invalid_client", True),
        (400, "invalid_scope", False),
        (400, "unauthorized_client", False),
        (403, "access_denied", False),
    ],
)
async def test_oauth_errors_are_rejections(http, fake_idp, status, error, drops):
    fake_idp.token_answer = (status, {"error": error, "error_description": "Token has been expired or revoked."}, {})
    with pytest.raises(IdPRejected) as caught:
        await make_client(http, fake_idp).refresh("rt-1")
    assert caught.value.error == error
    assert caught.value.description == "Token has been expired or revoked."
    assert caught.value.status == status
    assert caught.value.drops_credentials is drops


async def test_error_answered_with_200_is_still_a_rejection(http, fake_idp):
    fake_idp.token_answer = (200, {"error": "bad_refresh_token", "error_description": "expired"}, {})
    with pytest.raises(IdPRejected) as caught:
        await make_client(http, fake_idp).refresh("rt-1")
    assert (caught.value.error, caught.value.description, caught.value.status) == ("bad_refresh_token", "expired", 200)
    assert not caught.value.drops_credentials


@pytest.mark.parametrize(
    ("status", "body", "headers", "retry_after"),
    [
        (500, {"error": "server_error"}, {}, None),
        (502, "<html>bad gateway</html>", {}, None),
        (503, {"error": "temporarily_unavailable"}, {"Retry-After": "7"}, 7.0),
        (429, {"error": "slow_down"}, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        (400, "<html>bad request</html>", {}, None),  # not an OAuth answer
        (400, {"message": "no error field"}, {}, None),
        (400, {"error": "bad\nerror\x00code"}, {}, None),  # not an RFC 6749 §5.2 error code
        (404, "not found", {}, None),
        (307, "", {"Location": "https://elsewhere.example/token"}, None),  # a token POST is never redirected
    ],
)
async def test_failures_are_unavailable(http, fake_idp, status, body, headers, retry_after):
    fake_idp.token_answer = (status, body, headers)
    with pytest.raises(IdPUnavailable) as caught:
        await make_client(http, fake_idp).refresh("rt-1")
    assert not isinstance(caught.value, IdPMisconfigured)
    assert caught.value.status == status
    assert caught.value.retry_after == retry_after
    assert len(fake_idp.token_requests) == 1


async def test_timeout_is_unavailable(http, fake_idp):
    async def hang(request: web.Request) -> web.Response:
        await fake_idp.release.wait()
        return web.json_response({})

    fake_idp.token_handler = hang
    with pytest.raises(IdPUnavailable) as caught:
        await make_client(http, fake_idp).refresh("rt-1")
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, asyncio.TimeoutError)


async def test_connection_refused_is_unavailable(http, fake_idp):
    # A port nobody listens on: bind one, close it, name it as the token endpoint.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    fake_idp.discovery["token_endpoint"] = f"http://127.0.0.1:{dead_port}/token"
    with pytest.raises(IdPUnavailable) as caught:
        await make_client(http, fake_idp).refresh("rt-1")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_hostile_error_description_is_sanitized(http, fake_idp, caplog):
    hostile = "bad\r\nX-Injected: 1\x1b[31m\u202eevil\u2028" + "é" * 200
    fake_idp.token_answer = (400, {"error": "invalid_grant", "error_description": hostile}, {})
    with caplog.at_level(logging.WARNING, logger="sidecar.idp"), pytest.raises(IdPRejected) as caught:
        await make_client(http, fake_idp).refresh("rt-1")

    description = caught.value.description
    assert description is not None
    assert description.startswith("bad X-Injected: 1[31mevil ")
    assert len(description.encode("utf-8")) <= 120
    assert not any(ch in description for ch in "\r\n\x1b\u202e\u2028")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "\n" not in logged and "\x1b" not in logged


async def test_tokens_never_reach_the_log(http, fake_idp, caplog):
    fake_idp.token_answer = (
        200,
        {
            "access_token": "AT-SECRET",
            "refresh_token": "RT-NEW-SECRET",
            "id_token": "IDT-SECRET",
            "token_type": "Bearer",
            "expires_in": 5,
        },
        {},
    )
    client = make_client(http, fake_idp, token_auth_method="client_secret_post")
    with caplog.at_level(logging.DEBUG):
        tokens = await client.refresh("RT-OLD-SECRET")
        fake_idp.token_answer = (400, {"error": "invalid_grant"}, {})
        with pytest.raises(IdPRejected):
            await client.refresh("RT-OLD-SECRET")
    text = " ".join(r.getMessage() for r in caplog.records) + repr(tokens) + repr(client)
    for secret in ("AT-SECRET", "RT-NEW-SECRET", "IDT-SECRET", "RT-OLD-SECRET", CLIENT_SECRET):
        assert secret not in text
    assert "***" in repr(tokens) and "***" in repr(client)


# --- discovery (OIDC Discovery §4) ---


async def test_discovery_is_fetched_once_and_cached(http, fake_idp):
    client = make_client(http, fake_idp)
    await client.refresh("rt-1")
    await client.exchange_code("c", "https://x.example/cb", None)
    meta = await client.discover()
    assert fake_idp.count("/.well-known/openid-configuration") == 1
    assert meta.token_endpoint == fake_idp.base_url + "/token"
    assert meta.authorization_endpoint == fake_idp.base_url + "/authorize"


@pytest.mark.parametrize("announced", ["{base}/", "{base}/other", "https://evil.example"])
async def test_discovery_issuer_must_match_exactly(http, fake_idp, announced):
    fake_idp.discovery["issuer"] = announced.format(base=fake_idp.base_url)
    with pytest.raises(IdPMisconfigured):
        await make_client(http, fake_idp).refresh("rt-1")
    assert fake_idp.token_requests == []


async def test_discovery_of_an_issuer_with_a_path_drops_its_trailing_slash(http, fake_idp):
    issuer = fake_idp.base_url + "/tenant/"
    fake_idp.discovery["issuer"] = issuer
    client = IdPClient(http, issuer=issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    meta = await client.discover()
    assert meta.issuer == issuer
    assert [s.path for s in fake_idp.seen] == ["/tenant/.well-known/openid-configuration"]


@pytest.mark.parametrize("missing", ["token_endpoint", "jwks_uri"])
async def test_discovery_without_required_endpoints_is_misconfigured(http, fake_idp, missing):
    del fake_idp.discovery[missing]
    with pytest.raises(IdPMisconfigured):
        await make_client(http, fake_idp).discover()


@pytest.mark.parametrize("answer", [(500, "oops", {}), (200, "<html>", {}), (200, ["list"], {})])
async def test_discovery_failures_are_unavailable(http, fake_idp, answer):
    fake_idp.discovery_answer = answer
    with pytest.raises(IdPUnavailable):
        await make_client(http, fake_idp).refresh("rt-1")


async def test_expired_discovery_cache_survives_a_failed_refetch(http, fake_idp):
    monotonic = Monotonic()
    client = make_client(http, fake_idp, monotonic=monotonic)
    await client.refresh("rt-1")
    monotonic.now += DISCOVERY_CACHE_SECONDS + 1
    fake_idp.discovery_answer = (503, "down", {})
    tokens = await client.refresh("rt-2")
    assert tokens.access_token == "at-1"
    assert fake_idp.count("/.well-known/openid-configuration") == 2
    assert len(fake_idp.token_requests) == 2

    # The next attempt waits for the retry interval, then a good document replaces the old one.
    await client.refresh("rt-3")
    assert fake_idp.count("/.well-known/openid-configuration") == 2
    monotonic.now += DISCOVERY_RETRY_SECONDS
    fake_idp.discovery_answer = None
    fake_idp.discovery["token_endpoint"] = fake_idp.base_url + "/token?moved=1"
    await client.refresh("rt-4")
    assert fake_idp.count("/.well-known/openid-configuration") == 3
    assert (await client.discover()).token_endpoint.endswith("?moved=1")


async def test_concurrent_first_requests_share_one_discovery(http, fake_idp):
    client = make_client(http, fake_idp)
    await asyncio.gather(*(client.refresh(f"rt-{i}") for i in range(5)))
    assert fake_idp.count("/.well-known/openid-configuration") == 1
    assert len(fake_idp.token_requests) == 5
