"""ID token verification (OIDC Core §3.1.3.7) and key set handling (RFC 7517, OIDC Core §10.1.1)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from sidecar.idp import JWKS_CACHE_SECONDS, JWKS_REFETCH_MIN_INTERVAL_SECONDS, IdPClient, IdTokenInvalid

from .conftest import CLIENT_ID, CLIENT_SECRET, FakeIdP, Keys, public_jwk


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claims_for(fake: FakeIdP, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": fake.issuer,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 600,
        "nonce": "n-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: RSAPrivateKey, claims: dict[str, Any], kid: str | None = "k1", alg: str = "RS256") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def client(http: aiohttp.ClientSession, fake_idp: FakeIdP, keys: Keys, monotonic: Monotonic) -> IdPClient:
    fake_idp.jwks = {"keys": [public_jwk(keys.main, "k1")]}
    return IdPClient(
        http, issuer=fake_idp.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, monotonic=monotonic
    )


async def test_good_id_token_returns_its_claims(client, fake_idp, keys):
    claims = await client.verify_id_token(sign(keys.main, claims_for(fake_idp)), nonce="n-1")
    assert claims["sub"] == "user-1"
    assert claims["aud"] == CLIENT_ID


async def test_nonce_is_not_checked_when_none_was_sent(client, fake_idp, keys):
    # e.g. an ID token from a refresh (OIDC Core §12.2: no nonce there)
    claims = await client.verify_id_token(sign(keys.main, claims_for(fake_idp, nonce=None)))
    assert "nonce" not in claims


async def test_audience_list_with_our_client_and_azp(client, fake_idp, keys):
    token = sign(keys.main, claims_for(fake_idp, aud=[CLIENT_ID, "api"], azp=CLIENT_ID))
    assert (await client.verify_id_token(token))["azp"] == CLIENT_ID


async def test_expiry_within_leeway_passes(client, fake_idp, keys):
    now = int(time.time())
    token = sign(keys.main, claims_for(fake_idp, iat=now - 600, exp=now - 20))
    assert (await client.verify_id_token(token))["sub"] == "user-1"


@pytest.mark.parametrize(
    ("overrides", "nonce", "reason"),
    [
        ({"aud": "someone-else"}, None, "aud"),
        ({"aud": ["api", "other"]}, None, "aud"),
        ({"iss": "https://evil.example"}, None, "iss"),
        ({"iss": "{issuer}/"}, None, "iss"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, None, "expired"),
        ({"nonce": "n-2"}, "n-1", "nonce"),
        ({"nonce": None}, "n-1", "nonce"),
        ({"sub": None}, None, "sub"),
        ({"exp": None}, None, "exp"),
        ({"iat": int(time.time()) + 3600}, None, "not valid yet"),
        ({"aud": [CLIENT_ID, "api"]}, None, "azp"),
        ({"azp": "another-client"}, None, "azp"),
    ],
)
async def test_bad_claims_are_rejected(client, fake_idp, keys, overrides, nonce, reason):
    if overrides.get("iss") == "{issuer}/":
        overrides = {"iss": fake_idp.issuer + "/"}
    token = sign(keys.main, claims_for(fake_idp, **overrides))
    with pytest.raises(IdTokenInvalid) as caught:
        await client.verify_id_token(token, nonce=nonce)
    assert reason in caught.value.reason


async def test_bad_signature_is_rejected(client, fake_idp, keys):
    forged = sign(keys.other, claims_for(fake_idp), kid="k1")
    with pytest.raises(IdTokenInvalid, match="signature"):
        await client.verify_id_token(forged)


@pytest.mark.parametrize("alg", ["none", "HS256"])
async def test_algorithms_outside_the_allow_list_are_rejected(client, fake_idp, alg):
    if alg == "none":
        token = jwt.encode(claims_for(fake_idp), None, algorithm="none")
    else:
        # HS256 keyed with the public key's text: the classic confusion attack.
        token = jwt.encode(claims_for(fake_idp), "x" * 64, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(IdTokenInvalid, match="algorithm"):
        await client.verify_id_token(token)
    assert fake_idp.count("/jwks") == 0


async def test_key_declaring_another_alg_is_not_used(client, fake_idp, keys):
    fake_idp.jwks = {"keys": [public_jwk(keys.main, "k1", alg="RS512")]}
    with pytest.raises(IdTokenInvalid, match="algorithm"):
        await client.verify_id_token(sign(keys.main, claims_for(fake_idp), alg="RS256"))


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", ""])
async def test_malformed_tokens_are_rejected(client, token):
    with pytest.raises(IdTokenInvalid):
        await client.verify_id_token(token)


async def test_token_without_kid_uses_the_only_key(client, fake_idp, keys):
    token = sign(keys.main, claims_for(fake_idp), kid=None)
    assert (await client.verify_id_token(token))["sub"] == "user-1"


async def test_token_without_kid_is_rejected_when_the_set_has_several_keys(client, fake_idp, keys):
    fake_idp.jwks = {"keys": [public_jwk(keys.main, "k1"), public_jwk(keys.second, "k2")]}
    with pytest.raises(IdTokenInvalid, match="kid"):
        await client.verify_id_token(sign(keys.main, claims_for(fake_idp), kid=None))


async def test_keys_are_cached(client, fake_idp, keys):
    for _ in range(3):
        await client.verify_id_token(sign(keys.main, claims_for(fake_idp)))
    assert fake_idp.count("/jwks") == 1


async def test_unknown_kid_refetches_once_the_rate_limit_allows(client, fake_idp, keys, monotonic):
    await client.verify_id_token(sign(keys.main, claims_for(fake_idp)))
    # The IdP rotates to k2.
    fake_idp.jwks = {"keys": [public_jwk(keys.main, "k1"), public_jwk(keys.second, "k2")]}
    rotated = sign(keys.second, claims_for(fake_idp), kid="k2")

    # Right after a fetch, an unknown kid does not trigger another one (rate limit) ...
    with pytest.raises(IdTokenInvalid, match="kid"):
        await client.verify_id_token(rotated)
    assert fake_idp.count("/jwks") == 1

    # ... once the interval has passed it does, and the new key verifies.
    monotonic.now += JWKS_REFETCH_MIN_INTERVAL_SECONDS
    assert (await client.verify_id_token(rotated))["sub"] == "user-1"
    assert fake_idp.count("/jwks") == 2

    # A made-up kid right afterwards costs no request.
    with pytest.raises(IdTokenInvalid, match="kid"):
        await client.verify_id_token(sign(keys.other, claims_for(fake_idp), kid="made-up"))
    assert fake_idp.count("/jwks") == 2


async def test_stale_keys_are_kept_when_the_refetch_fails(client, fake_idp, keys, monotonic):
    await client.verify_id_token(sign(keys.main, claims_for(fake_idp)))
    monotonic.now += JWKS_CACHE_SECONDS + 1
    fake_idp.jwks = {"no": "keys"}
    assert (await client.verify_id_token(sign(keys.main, claims_for(fake_idp))))["sub"] == "user-1"
    assert fake_idp.count("/jwks") == 2


async def test_unusable_keys_are_skipped(client, fake_idp, keys):
    fake_idp.jwks = {
        "keys": [
            {"kty": "unknown", "kid": "x"},
            public_jwk(keys.second, "enc", use="enc"),
            public_jwk(keys.main, "k1"),
        ]
    }
    assert (await client.verify_id_token(sign(keys.main, claims_for(fake_idp))))["sub"] == "user-1"
    with pytest.raises(IdTokenInvalid, match="kid"):
        await client.verify_id_token(sign(keys.second, claims_for(fake_idp), kid="enc"))
