"""IdPClient against the real oidc-provider-mock, behind the strict IdP front (rotation, PKCE, outages)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from sidecar.idp import IdPClient, IdPMisconfigured, IdPRejected, IdPUnavailable, IdTokenInvalid
from tests.support.oidc import DEFAULT_REDIRECT_URI, DEFAULT_SUB, IdPFront

from .conftest import TEST_IDP_TIMEOUT_SECONDS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def login(front: IdPFront, *, nonce: str, challenge: str | None, sub: str = DEFAULT_SUB) -> str:
    """The browser part of a login: returns the authorization code the IdP redirects back with."""
    location = await front.authorize(
        front.build_authorize_url(state="s-1", nonce=nonce, code_challenge=challenge), sub=sub
    )
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["s-1"]
    return query["code"][0]


async def test_discovery_names_the_front(client: IdPClient, idp_front: IdPFront):
    meta = await client.discover()
    assert meta.issuer == idp_front.issuer
    assert meta.token_endpoint == idp_front.token_endpoint
    assert meta.authorization_endpoint == idp_front.authorization_endpoint
    assert meta.jwks_uri.startswith(idp_front.issuer + "/")
    assert "S256" in meta.code_challenge_methods_supported


async def test_discovery_with_another_issuer_is_misconfigured(client: IdPClient, idp_front: IdPFront):
    idp_front.discovery_overrides = {"issuer": "https://impostor.example"}
    with pytest.raises(IdPMisconfigured):
        await client.discover()


async def test_code_exchange_with_pkce_and_id_token_verification(client: IdPClient, idp_front: IdPFront):
    verifier, challenge = pkce_pair()
    code = await login(idp_front, nonce="nonce-1", challenge=challenge)

    tokens = await client.exchange_code(code, DEFAULT_REDIRECT_URI, verifier)

    assert tokens.access_token and tokens.refresh_token and tokens.id_token
    assert tokens.expires_in_source == "response"
    claims = await client.verify_id_token(tokens.id_token, nonce="nonce-1")
    assert claims["sub"] == DEFAULT_SUB
    assert claims["iss"] == idp_front.issuer
    seen = idp_front.token_requests[-1]
    assert seen.auth_method == "client_secret_basic"
    assert seen.form["code_verifier"] == verifier
    assert seen.client_secret == idp_front.client_secret  # §2.3.1 encoding survived the round trip


async def test_code_exchange_with_a_wrong_verifier_is_invalid_grant(client: IdPClient, idp_front: IdPFront):
    _, challenge = pkce_pair()
    code = await login(idp_front, nonce="nonce-1", challenge=challenge)
    with pytest.raises(IdPRejected) as caught:
        await client.exchange_code(code, DEFAULT_REDIRECT_URI, "not-the-verifier" * 3)
    assert caught.value.error == "invalid_grant"


async def test_id_token_with_the_wrong_nonce_is_rejected(client: IdPClient, idp_front: IdPFront):
    tokens = await idp_front.obtain_tokens(nonce="the-real-nonce")
    assert tokens.id_token is not None
    with pytest.raises(IdTokenInvalid, match="nonce"):
        await client.verify_id_token(tokens.id_token, nonce="another-nonce")


async def test_expired_id_token_is_rejected(client: IdPClient, idp_front: IdPFront):
    idp_front.id_token_lifetime = -300  # re-signed with the mock's key, already past exp + leeway
    tokens = await idp_front.obtain_tokens()
    assert tokens.id_token is not None
    with pytest.raises(IdTokenInvalid, match="expired"):
        await client.verify_id_token(tokens.id_token, nonce=tokens.nonce)


async def test_refresh_rotates_many_times_in_a_row(client: IdPClient, idp_front: IdPFront):
    initial = await idp_front.obtain_tokens()
    refresh_token = initial.refresh_token
    assert refresh_token is not None
    seen_tokens = {refresh_token}
    access_tokens = {initial.access_token}

    for _ in range(25):
        tokens = await client.refresh(refresh_token)
        assert tokens.refresh_token is not None
        assert tokens.refresh_token not in seen_tokens
        seen_tokens.add(tokens.refresh_token)
        access_tokens.add(tokens.access_token)
        refresh_token = tokens.refresh_token
        assert tokens.id_token is not None
        assert (await client.verify_id_token(tokens.id_token))["sub"] == DEFAULT_SUB

    assert len(access_tokens) == 26
    assert idp_front.refresh_calls == 25
    assert idp_front.refresh_successes == 25
    assert idp_front.refresh_rejections == 0
    assert idp_front.live_refresh_tokens == 1


async def test_reusing_a_rotated_refresh_token_is_invalid_grant(client: IdPClient, idp_front: IdPFront):
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    rotated = await client.refresh(initial.refresh_token)

    with pytest.raises(IdPRejected) as caught:
        await client.refresh(initial.refresh_token)
    assert caught.value.error == "invalid_grant"
    assert caught.value.drops_credentials
    assert caught.value.description == "the refresh token is invalid, revoked or already used"

    assert rotated.refresh_token is not None
    assert (await client.refresh(rotated.refresh_token)).refresh_token


async def test_client_secret_post_is_accepted(http: aiohttp.ClientSession, idp_front: IdPFront):
    client = IdPClient(
        http,
        issuer=idp_front.issuer,
        client_id=idp_front.client_id,
        client_secret=idp_front.client_secret,
        token_auth_method="client_secret_post",
    )
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    tokens = await client.refresh(initial.refresh_token)
    assert tokens.refresh_token is not None
    seen = idp_front.token_requests[-1]
    assert (seen.auth_method, seen.authorization) == ("client_secret_post", None)


async def test_wrong_client_secret_is_invalid_client(http: aiohttp.ClientSession, idp_front: IdPFront):
    client = IdPClient(http, issuer=idp_front.issuer, client_id=idp_front.client_id, client_secret="wrong secret")
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    with pytest.raises(IdPRejected) as caught:
        await client.refresh(initial.refresh_token)
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)
    assert caught.value.drops_credentials


async def test_short_lifetime_of_refreshed_tokens(client: IdPClient, idp_front: IdPFront):
    idp_front.refreshed_access_token_lifetime = 5
    idp_front.refreshed_id_token_lifetime = 90
    initial = await idp_front.obtain_tokens()
    assert initial.expires_in == 3600 and initial.refresh_token is not None
    tokens = await client.refresh(initial.refresh_token)
    assert (tokens.expires_in, tokens.expires_in_source) == (5, "response")
    assert tokens.id_token is not None
    claims = await client.verify_id_token(tokens.id_token)
    assert claims["exp"] - claims["iat"] == 90


async def test_idp_keeping_its_refresh_token_returns_none(client: IdPClient, idp_front: IdPFront):
    idp_front.rotate_refresh_tokens = False
    idp_front.id_token_on_refresh = False
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    for _ in range(3):
        tokens = await client.refresh(initial.refresh_token)
        assert tokens.refresh_token is None  # the caller keeps initial.refresh_token
        assert tokens.id_token is None


@pytest.mark.parametrize("mode", ["503", "hang"])
async def test_idp_down_is_unavailable_and_spends_nothing(client: IdPClient, idp_front: IdPFront, mode):
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    await client.discover()

    idp_front.set_down(mode)  # type: ignore[arg-type]
    with pytest.raises(IdPUnavailable) as caught:
        await client.refresh(initial.refresh_token)
    assert caught.value.status == (503 if mode == "503" else None)
    assert idp_front.refresh_calls == 1
    assert idp_front.refresh_successes == 0

    idp_front.set_up()
    tokens = await client.refresh(initial.refresh_token)  # the token was not spent by the outage
    assert tokens.refresh_token is not None
    assert idp_front.refresh_calls == 2


async def test_idp_down_before_discovery_is_unavailable(client: IdPClient, idp_front: IdPFront):
    idp_front.set_down("503")
    with pytest.raises(IdPUnavailable) as caught:
        await client.refresh("anything")
    assert caught.value.status == 503
    assert idp_front.refresh_calls == 0


async def test_idp_gone_is_unavailable(http: aiohttp.ClientSession, oidc_mock):
    async with IdPFront(oidc_mock) as front:
        client = IdPClient(
            http,
            issuer=front.issuer,
            client_id=front.client_id,
            client_secret=front.client_secret,
            timeout=TEST_IDP_TIMEOUT_SECONDS,
        )
        initial = await front.obtain_tokens()
        await client.discover()
    assert initial.refresh_token is not None
    with pytest.raises(IdPUnavailable):
        await client.refresh(initial.refresh_token)


async def test_revoked_grant_is_invalid_grant(client: IdPClient, idp_front: IdPFront):
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    idp_front.revoke_refresh_tokens()
    with pytest.raises(IdPRejected) as caught:
        await client.refresh(initial.refresh_token)
    assert caught.value.error == "invalid_grant"


async def test_forced_error_with_hostile_description_is_sanitized(client: IdPClient, idp_front: IdPFront):
    idp_front.forced_token_error = (
        400,
        {"error": "invalid_grant", "error_description": "Token has been expired or revoked.\r\nSet-Cookie: x=1"},
    )
    with pytest.raises(IdPRejected) as caught:
        await client.refresh("whatever")
    assert caught.value.description == "Token has been expired or revoked. Set-Cookie: x=1"


async def test_concurrent_use_of_one_refresh_token_succeeds_once(client: IdPClient, idp_front: IdPFront):
    initial = await idp_front.obtain_tokens()
    assert initial.refresh_token is not None
    results = await asyncio.gather(*(client.refresh(initial.refresh_token) for _ in range(4)), return_exceptions=True)
    successes = [r for r in results if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(successes) == 1
    assert all(isinstance(f, IdPRejected) and f.error == "invalid_grant" for f in failures)
    assert (idp_front.refresh_calls, idp_front.refresh_successes, idp_front.refresh_rejections) == (4, 1, 3)
