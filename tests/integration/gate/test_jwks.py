"""Gate with signature verification (jwks_url, issuer, audience) against an RSA issuer's JWKS."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.gate.helpers import SidecarFactory, metrics_of, sample
from tests.support.backends import EchoBackend, free_port
from tests.support.jwt_tokens import RsaIssuer, alg_none, compact, hs256


@pytest.fixture(scope="module")
def issuer() -> RsaIssuer:
    return RsaIssuer("https://idp.example.com", kid="key-1")


@pytest.fixture(scope="module")
def impostor() -> RsaIssuer:
    return RsaIssuer("https://idp.example.com", kid="key-1")  # same iss and kid, another key


@pytest.fixture
async def jwks_url(issuer: RsaIssuer, start_backend: Any) -> str:
    issuer.jwks_fetches = 0
    issuer.jwks_status = 200
    server = await start_backend(issuer.jwks_app())
    return str(server.make_url("/jwks.json"))


@pytest.fixture
async def verifying(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], jwks_url: str, issuer: RsaIssuer
) -> Any:
    _, upstream = echo
    return await start_sidecar(upstream, jwks_url=jwks_url, issuer=issuer.issuer, audience=["mcp-test"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_good_signed_token_passes(verifying: Any, echo: tuple[EchoBackend, str], issuer: RsaIssuer) -> None:
    backend, _ = echo
    token = issuer.sign()
    resp = await verifying.post("/mcp", headers=bearer(token), data=b"{}")
    assert resp.status == 200
    assert backend.last.get("Authorization") == f"Bearer {token}"
    # Keys are fetched once, not per request.
    for _ in range(3):
        assert (await verifying.post("/mcp", headers=bearer(issuer.sign()), data=b"{}")).status == 200
    assert issuer.jwks_fetches == 1


async def test_audience_in_a_list_passes(verifying: Any, issuer: RsaIssuer) -> None:
    token = issuer.sign(audience=None, aud=["other", "mcp-test"])
    assert (await verifying.get("/mcp", headers=bearer(token))).status == 200


@pytest.mark.parametrize(
    ("case", "description"),
    [
        ("wrong_signature", "signature"),
        ("wrong_issuer", "issuer"),
        ("wrong_audience", "aud"),
        ("no_audience", "aud"),
        ("alg_none", "'none'"),
        ("hs256_with_public_key", "'HS256'"),
        ("unknown_kid", "unknown key"),
        ("expired", "expired"),
        ("tampered_claims", "signature"),
    ],
)
async def test_bad_tokens_are_401_invalid_token(
    verifying: Any,
    echo: tuple[EchoBackend, str],
    issuer: RsaIssuer,
    impostor: RsaIssuer,
    case: str,
    description: str,
) -> None:
    backend, _ = echo
    if case == "wrong_signature":
        token = impostor.sign()
    elif case == "wrong_issuer":
        token = issuer.sign(iss="https://other-idp.example.com")
    elif case == "wrong_audience":
        token = issuer.sign(audience="someone-else")
    elif case == "no_audience":
        token = issuer.sign(audience=None)
    elif case == "alg_none":
        token = alg_none(issuer.claims(), kid=issuer.kid)
    elif case == "hs256_with_public_key":
        token = hs256(issuer.claims(), issuer.public_pem(), kid=issuer.kid)
    elif case == "unknown_kid":
        token = issuer.sign(kid="rotated-away")
    elif case == "expired":
        token = issuer.sign(ttl=-3600)
    else:
        header, _, signature = issuer.sign().split(".")
        forged = compact({}, issuer.claims(sub="admin")).split(".")[1]
        token = f"{header}.{forged}.{signature}"
    resp = await verifying.post("/mcp", headers=bearer(token), data=b"{}")
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge
    assert description in challenge, challenge
    assert backend.seen == []


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256", "RS512"])
async def test_header_alg_that_does_not_fit_the_key_is_401_not_500(
    verifying: Any, echo: tuple[EchoBackend, str], issuer: RsaIssuer, alg: str
) -> None:
    # The kid names an RSA key; an attacker picks another (allowed) algorithm family in the header.
    backend, _ = echo
    token = compact({"alg": alg, "kid": issuer.kid, "typ": "JWT"}, issuer.claims(), b"\x00" * 64)
    resp = await verifying.post("/mcp", headers=bearer(token), data=b"{}")
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert backend.seen == []


async def test_jwks_down_at_start_is_503_with_retry_after_then_recovers(
    verifying: Any, echo: tuple[EchoBackend, str], issuer: RsaIssuer
) -> None:
    backend, _ = echo
    issuer.jwks_status = 503
    resp = await verifying.post("/mcp", headers=bearer(issuer.sign()), data=b"{}")
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "temporarily_unavailable"
    assert backend.seen == []
    issuer.jwks_status = 200
    resp = await verifying.post("/mcp", headers=bearer(issuer.sign()), data=b"{}")
    assert resp.status == 200
    assert sample(metrics_of(verifying), "mcp_sidecar_requests_total", status="503") == 1


async def test_jwks_unreachable_is_503(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], issuer: RsaIssuer
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    resp = await client.post("/mcp", headers=bearer(issuer.sign()), data=b"{}")
    assert resp.status == 503
    assert "Retry-After" in resp.headers


async def test_unsigned_tokens_are_refused_when_verification_is_on(verifying: Any) -> None:
    token = compact({"alg": "RS256", "kid": "key-1"}, {"exp": 9999999999, "iss": "https://idp.example.com"})
    resp = await verifying.post("/mcp", headers=bearer(token), data=b"{}")
    assert resp.status == 401
