"""Issue 13: RFC 9864's ``Ed25519`` id_token algorithm (advertised by panva's oidc-provider) is accepted with
an Ed25519 key, and ``idp_userinfo_claims`` fills identity claims from the UserInfo endpoint (OIDC Core
§5.3, §5.4) only when its ``sub`` matches the ID token's."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from sidecar.idp import IdPClient, IdPUnavailable, IdTokenInvalid
from sidecar.oauth.callback import _with_userinfo

from .conftest import CLIENT_ID, CLIENT_SECRET, FakeIdP


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def okp_token(key: Ed25519PrivateKey | Ed448PrivateKey, claims: dict[str, Any], alg: str, kid: str = "ed") -> str:
    header = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = key.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{b64(signature)}"


def okp_jwk(key: Ed25519PrivateKey | Ed448PrivateKey, alg: str | None, kid: str = "ed") -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = kid
    if alg:
        jwk["alg"] = alg
    return jwk


def claims(fake: FakeIdP) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": fake.issuer, "sub": "user-1", "aud": CLIENT_ID, "iat": now, "exp": now + 600}


def client(http: aiohttp.ClientSession, fake: FakeIdP) -> IdPClient:
    return IdPClient(http, issuer=fake.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


@pytest.mark.parametrize(("alg", "jwk_alg"), [("Ed25519", "Ed25519"), ("Ed25519", None), ("EdDSA", "EdDSA")])
async def test_ed25519_id_tokens_verify(http, fake_idp, alg, jwk_alg) -> None:
    key = Ed25519PrivateKey.generate()
    fake_idp.jwks = {"keys": [okp_jwk(key, jwk_alg)]}
    got = await client(http, fake_idp).verify_id_token(okp_token(key, claims(fake_idp), alg))
    assert got["sub"] == "user-1"


async def test_ed25519_with_a_forged_signature_is_refused(http, fake_idp) -> None:
    key = Ed25519PrivateKey.generate()
    fake_idp.jwks = {"keys": [okp_jwk(key, "Ed25519")]}
    forged = okp_token(Ed25519PrivateKey.generate(), claims(fake_idp), "Ed25519")
    with pytest.raises(IdTokenInvalid):
        await client(http, fake_idp).verify_id_token(forged)


async def test_ed25519_name_with_an_ed448_key_is_refused(http, fake_idp) -> None:
    """RFC 9864: "Ed25519" means that curve only; an Ed448 key may not be used under that name."""
    key = Ed448PrivateKey.generate()
    fake_idp.jwks = {"keys": [okp_jwk(key, "EdDSA")]}
    with pytest.raises(IdTokenInvalid):
        await client(http, fake_idp).verify_id_token(okp_token(key, claims(fake_idp), "Ed25519"))


async def test_userinfo_sends_the_bearer_token(http: aiohttp.ClientSession, fake_idp: FakeIdP) -> None:
    fake_idp.discovery["userinfo_endpoint"] = fake_idp.base_url + "/userinfo"
    fake_idp.userinfo_answer = (200, {"sub": "user-1", "email": "u@example.com"}, {})
    info = await client(http, fake_idp).userinfo("up-at")
    assert info["email"] == "u@example.com"
    assert fake_idp.seen[-1].headers["Authorization"] == "Bearer up-at"


async def test_userinfo_without_an_endpoint_is_an_idp_problem(http, fake_idp) -> None:
    with pytest.raises(IdPUnavailable):
        await client(http, fake_idp).userinfo("up-at")


class StubIdP:
    def __init__(self, answer: dict[str, Any] | Exception) -> None:
        self.answer = answer

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


ID_CLAIMS = {"sub": "user-1", "name": "From ID token"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"sub": "user-1", "email": "u@example.com", "name": "Other"},
         {"sub": "user-1", "email": "u@example.com", "name": "From ID token"}),  # the ID token's claims win
        ({"sub": "user-2", "email": "evil@example.com"}, ID_CLAIMS),  # §5.3.2: another subject: not used
        ({"email": "u@example.com"}, ID_CLAIMS),  # no sub: not used
        (IdPUnavailable("down"), ID_CLAIMS),  # trouble: the login goes on with the ID token's claims
    ],
)
async def test_userinfo_claims_merge(answer: Any, expected: dict[str, Any]) -> None:
    assert await _with_userinfo(StubIdP(answer), "at", dict(ID_CLAIMS)) == expected  # type: ignore[arg-type]
