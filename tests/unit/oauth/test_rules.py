"""Pure rules of the authorization server: redirect URIs, resources, PKCE, CIMD URLs and addresses,
registration metadata, rate limits, provider profiles in the upstream URL, metadata and error rendering."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.config import Settings
from sidecar.oauth import errors as oauth_errors
from sidecar.oauth.as_metadata import document
from sidecar.oauth.cimd import address_allowed, client_id_url_problem
from sidecar.oauth.clients import redirect_uri_matches, redirect_uri_problem
from sidecar.oauth.common import pkce_matches, resource_allowed, s256, with_params
from sidecar.oauth.context import OAuthState
from sidecar.oauth.errors import InvalidClient, InvalidGrant, RateLimited
from sidecar.oauth.ratelimit import RateLimiter
from sidecar.oauth.registration import validate
from sidecar.oauth.token import remaining
from sidecar.oauth.upstream import upstream_authorize_url


def settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "broker", "upstream": "http://127.0.0.1:9", "public_url": "https://mcp.example.com",
        "idp_issuer": "https://idp.example.com", "idp_client_id": "sidecar", "idp_client_secret": "s",
    }
    values.update(extra)
    return Settings(**values)


@pytest.mark.parametrize(
    ("uri", "app_type", "ok"),
    [
        ("https://app.example.com/cb", "web", True),
        ("http://127.0.0.1:3000/cb", "web", True),
        ("http://[::1]:3000/cb", "native", True),
        ("http://localhost:6274/oauth/callback", "web", True),
        ("http://app.example.com/cb", "web", False),
        ("https://app.example.com/cb#frag", "web", False),
        ("https://user:pw@app.example.com/cb", "web", False),
        ("/relative/cb", "web", False),
        ("com.example.app:/oauth2redirect", "native", True),
        ("com.example.app:/oauth2redirect", "web", False),
        ("javascript:alert(1)", "native", False),
        ("data:text/html,x", "native", False),
        ("file:///etc/passwd", "native", False),
        ("myapp:/cb", "native", True),  # single-word private-use schemes: real MCP clients use them
        ("cursor://anysphere.cursor-retrieval/oauth/user-mcp/callback", "native", True),
        ("cursor://anysphere.cursor-retrieval/oauth/user-mcp/callback", "web", False),
        ("https://app.example.com/c b", "web", False),
        (42, "web", False),
    ],
)
def test_redirect_uri_rules(uri: object, app_type: str, ok: bool) -> None:
    assert (redirect_uri_problem(uri, app_type) is None) is ok


@pytest.mark.parametrize(
    ("registered", "requested", "ok"),
    [
        ("https://app.example.com/cb", "https://app.example.com/cb", True),
        ("https://app.example.com/cb", "https://app.example.com/cb/", False),
        ("https://app.example.com/cb", "https://APP.example.com/cb", False),
        ("https://app.example.com:443/cb", "https://app.example.com:8443/cb", False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:61234/cb", True),  # RFC 8252 §7.3: any port on loopback IPs
        ("http://127.0.0.1:1/cb", "http://127.0.0.1:2/cb", True),
        ("http://[::1]:1/cb", "http://[::1]:2/cb", True),
        ("http://127.0.0.1:1/cb", "http://127.0.0.1:2/other", False),
        ("http://localhost:1/cb", "http://localhost:2/cb", False),  # names are matched exactly
        ("http://127.0.0.1:1/cb", "http://127.0.0.2:1/cb", False),
    ],
)
def test_redirect_uri_matching(registered: str, requested: str, ok: bool) -> None:
    assert redirect_uri_matches([registered], requested) is ok


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        ("https://mcp.example.com", True),
        ("https://mcp.example.com/", True),
        ("https://mcp.example.com/mcp", True),
        ("https://MCP.example.com:443/mcp", True),
        ("https://mcp.example.com/mcp#x", False),
        ("http://mcp.example.com/mcp", False),
        ("https://mcp.example.com.evil.com/mcp", False),
        ("https://mcp.example.com:8443/mcp", False),
        ("https://other.example.com", False),
        ("mcp", False),
    ],
)
def test_resource(resource: str, ok: bool) -> None:
    assert resource_allowed(resource, settings()) is ok


def test_resource_under_a_path() -> None:
    s = settings(public_url="https://example.com/team")
    assert resource_allowed("https://example.com/team/mcp", s)
    assert not resource_allowed("https://example.com/teams/mcp", s)
    assert not resource_allowed("https://example.com/", s)


def test_pkce() -> None:
    verifier = "a" * 43
    assert pkce_matches(verifier, s256(verifier))
    assert not pkce_matches("b" * 43, s256(verifier))
    assert not pkce_matches("short", s256("short"))  # RFC 7636 §4.1: 43-128 characters
    assert not pkce_matches("a" * 129, s256("a" * 129))


@pytest.mark.parametrize(
    ("client_id", "ok"),
    [
        ("https://app.example.com/client.json", True),
        ("https://app.example.com/", False),
        ("https://app.example.com", False),
        ("http://app.example.com/client.json", False),
        ("https://app.example.com/a/../client.json", False),
        ("https://app.example.com/./client.json", False),
        ("https://app.example.com/client.json#x", False),
        ("https://u:p@app.example.com/client.json", False),
    ],
)
def test_client_id_urls(client_id: str, ok: bool) -> None:
    assert (client_id_url_problem(client_id) is None) is ok


@pytest.mark.parametrize(
    ("address", "private_ok", "public_ok"),
    [
        ("8.8.8.8", True, True),
        ("2001:4860:4860::8888", True, True),
        ("127.0.0.1", True, False),
        ("10.1.2.3", True, False),
        ("192.168.1.1", True, False),
        ("169.254.169.254", True, False),  # cloud metadata
        ("::1", True, False),
        ("fe80::1", True, False),
        ("::ffff:127.0.0.1", True, False),
        ("0.0.0.0", False, False),
        ("224.0.0.1", False, False),
    ],
)
def test_addresses(address: str, private_ok: bool, public_ok: bool) -> None:
    assert address_allowed(address, True) is private_ok
    assert address_allowed(address, False) is public_ok


def test_registration_defaults() -> None:
    client, echo = validate({"redirect_uris": ["http://127.0.0.1:9/cb"], "client_name": "X"})
    assert client.token_endpoint_auth_method == "client_secret_basic"  # RFC 7591 §2 default
    assert echo["grant_types"] == ["authorization_code", "refresh_token"]
    assert echo["application_type"] == "web" and echo["response_types"] == ["code"]
    assert client.client_id.startswith("mcpc_")


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://a.example/cb#f"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"},
         "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["refresh_token"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}, "invalid_client_metadata"),
        ({"redirect_uris": ["https://a.example/cb"], "application_type": "desktop"}, "invalid_client_metadata"),
        ([], "invalid_client_metadata"),
    ],
)
def test_registration_errors(meta: Any, error: str) -> None:
    with pytest.raises(oauth_errors.OAuthError) as info:
        validate(meta)
    assert info.value.error == error and info.value.status == 400


def test_rate_limiter() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.check("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.check("a") == 20  # one token per 20 s at 3/min
    assert limiter.check("b") == 0  # per address
    now[0] += 20
    assert limiter.check("a") == 0
    assert RateLimiter(0).check("a") == 0  # 0 disables


PROFILE_TABLE: list[tuple[dict[str, Any], str, str | None, str | None]] = [
    ({"idp_issuer": "https://accounts.google.com"}, "openid email profile", "offline", "consent"),
    ({"idp_issuer": "https://accounts.google.com", "force_consent": False},
     "openid email profile", "offline", None),
    ({"idp_issuer": "https://tenant.auth0.com/"}, "openid email profile offline_access", None, None),
    ({"idp_issuer": "https://tenant.auth0.com/", "force_consent": True},
     "openid email profile offline_access", None, "consent"),
    ({"idp_issuer": "https://idp.example.com", "idp_provider": "google"}, "openid email profile", "offline",
     "consent"),
    ({"idp_issuer": "https://accounts.google.com", "idp_provider": "generic"},
     "openid email profile offline_access", None, "consent"),
    # OIDC Core §11: the generic profile asks for consent with offline_access (strict providers need it).
    ({"idp_issuer": "https://idp.example.com"}, "openid email profile offline_access", None, "consent"),
    ({"idp_issuer": "https://idp.example.com", "force_consent": False},
     "openid email profile offline_access", None, None),
]


@pytest.mark.parametrize(("extra", "scope", "access_type", "prompt"), PROFILE_TABLE)
def test_provider_profiles(extra: dict[str, Any], scope: str, access_type: str | None, prompt: str | None) -> None:
    url = upstream_authorize_url(
        settings(**extra), "https://idp.example.com/authorize?tenant=1", redirect_uri="https://mcp.example.com/oauth/callback",
        state="s", nonce="n", code_challenge="c",
    )
    assert url.startswith("https://idp.example.com/authorize?tenant=1&")  # RFC 6749 §3.1: query retained
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["scope"] == scope
    assert params.get("access_type") == access_type
    assert params.get("prompt") == prompt
    assert params["code_challenge_method"] == "S256" and params["nonce"] == "n" and params["state"] == "s"


def test_metadata_document() -> None:
    doc = document(OAuthState.build(settings(public_url="https://mcp.example.com/team/")))
    assert doc["issuer"] == "https://mcp.example.com/team"
    assert doc["token_endpoint"] == "https://mcp.example.com/team/oauth/token"
    assert doc["scopes_supported"] == ["openid", "email", "profile", "offline_access"]
    assert doc["code_challenge_methods_supported"] == ["S256"]


def test_error_rendering() -> None:
    response = InvalidClient("nope").response()
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.body is not None
    assert json.loads(bytes(response.body)) == {"error": "invalid_client", "error_description": "nope"}
    assert InvalidGrant("x\r\ny").description == "xy"
    assert RateLimited(7).response().headers["Retry-After"] == "7"


def test_remaining_never_exceeds_real_life() -> None:
    assert remaining(100.9, 0.0) == 100
    assert remaining(100.0, 0.0, cap=60) == 60
    assert remaining(10.0, 20.0) == 0


def test_with_params() -> None:
    assert with_params("https://a/cb?x=1", {"code": "c", "state": None}) == "https://a/cb?x=1&code=c"
    assert with_params("com.example.app:/cb", {"code": "a b"}) == "com.example.app:/cb?code=a+b"


def test_a_client_registering_a_private_use_scheme_without_application_type_is_native() -> None:
    """Cursor registers ``cursor://…`` and sends no application_type: it is a native app, not refused."""
    from sidecar.oauth.errors import InvalidRedirectUri
    from sidecar.oauth.registration import validate

    cursor = "cursor://anysphere.cursor-retrieval/oauth/user-mcp/callback"
    client, echoed = validate({"redirect_uris": [cursor], "token_endpoint_auth_method": "none"})
    assert client.application_type == "native" and echoed["application_type"] == "native"
    assert list(client.redirect_uris) == [cursor]
    with pytest.raises(InvalidRedirectUri, match="https"):
        validate({"redirect_uris": [cursor], "application_type": "web"})
