"""The bearer check on every request, as a client sees it: statuses, challenges, bodies, and what reached the
backend (nothing, when refused). DESIGN §4."""

from __future__ import annotations

import re
import time

import pytest
from yarl import URL

from tests.integration.gate.helpers import PUBLIC, SidecarFactory, metrics_of, sample
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import b64url, b64url_json, compact, expired, unsigned, valid

RM_MCP = f"{PUBLIC}/.well-known/oauth-protected-resource/mcp"
RM_ROOT = f"{PUBLIC}/.well-known/oauth-protected-resource"
_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


def challenge(resp: object) -> dict[str, str]:
    value = resp.headers["WWW-Authenticate"]  # type: ignore[attr-defined]
    assert value.startswith("Bearer ")
    return dict(_PARAM.findall(value))


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Digest username=x"}, {"Authorization": "Bearer"}],
)
async def test_no_credentials_is_401_without_error(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], headers: dict[str, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers=headers, data=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    if headers.get("Authorization") == "Bearer":
        # "Bearer" with nothing after it is a Bearer credential that is empty: invalid_token.
        assert resp.status == 401
        assert challenge(resp)["error"] == "invalid_token"
    else:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{RM_MCP}"'
    body = await resp.json()
    assert set(body) == {"error", "error_description"}
    assert resp.headers["Cache-Control"] == "no-store"
    assert backend.seen == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_scheme_is_case_insensitive(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], scheme: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    token = valid()
    resp = await client.post("/mcp", headers={"Authorization": f"{scheme} {token}"}, data=b"{}")
    assert resp.status == 200
    assert backend.last.get("Authorization") == f"{scheme} {token}"  # forwarded as the client sent it


@pytest.mark.parametrize(
    ("token", "description"),
    [
        (expired(), "expired"),
        (unsigned({"exp": time.time() + 7200, "nbf": time.time() + 3600}), "not valid yet"),
        (compact({"alg": "RS256"}, {"exp": "tomorrow"}), "exp"),
        (compact({"alg": "RS256"}, [1, 2]), "JSON object"),
        ("eyJhbGciOiJSUzI1NiJ9.a+b/c.sig", "base64url"),
        ("eyJhbGciOiJSUzI1NiJ9.!!!.sig", "malformed"),
        ("has spaces inside", "malformed"),
        (b64url_json({"alg": "RS256"}) + "." + b64url(b'{"exp": NaN}') + ".c2ln", ""),  # NaN: never expires
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_invalid_tokens_are_401_invalid_token_on_every_method(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], token: str, description: str, method: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.request(method, "/mcp", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 401
    params = challenge(resp)
    assert params["error"] == "invalid_token"
    assert description in params["error_description"]
    assert params["resource_metadata"] == RM_MCP
    assert (await resp.json())["error"] == "invalid_token"
    assert backend.seen == []


async def test_expired_tools_list_is_refused_and_counted(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post(
        "/mcp",
        headers={"Authorization": f"Bearer {expired(ago=120)}", "Mcp-Session-Id": "abc", "Mcp-Method": "tools/list"},
        data=b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}',
    )
    assert resp.status == 401
    assert challenge(resp)["error_description"] == "the access token expired"
    metrics = metrics_of(client)
    assert sample(metrics, "mcp_sidecar_auth_rejections_total", reason="expired") == 1
    assert sample(metrics, "mcp_sidecar_requests_total", status="401") == 1
    assert backend.seen == []


async def test_leeway_is_honoured(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, leeway_seconds=60)
    within = unsigned({"exp": time.time() - 30})
    beyond = unsigned({"exp": time.time() - 90})
    assert (await client.get("/mcp", headers={"Authorization": f"Bearer {within}"})).status == 200
    assert (await client.get("/mcp", headers={"Authorization": f"Bearer {beyond}"})).status == 401


async def test_token_without_exp_and_future_iat_pass(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)
    no_exp = compact({"alg": "RS256"}, {"sub": "x"})
    future_iat = unsigned({"exp": time.time() + 600, "iat": time.time() + 86400})
    float_exp = unsigned({"exp": time.time() + 600.25})
    for token in (no_exp, future_iat, float_exp):
        assert (await client.get("/mcp", headers={"Authorization": f"Bearer {token}"})).status == 200


async def test_opaque_tokens_pass_by_default_and_reach_the_backend(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.get("/mcp", headers={"Authorization": "Bearer gho_opaqueToken123"})
    assert resp.status == 200
    assert backend.last.get("Authorization") == "Bearer gho_opaqueToken123"


async def test_opaque_tokens_rejected_when_configured(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, opaque_tokens="reject")
    resp = await client.get("/mcp", headers={"Authorization": "Bearer gho_opaqueToken123"})
    assert resp.status == 401
    assert challenge(resp)["error"] == "invalid_token"
    assert backend.seen == []
    assert sample(metrics_of(client), "mcp_sidecar_auth_rejections_total", reason="opaque_rejected") == 1


async def test_forward_client_token_false_keeps_authorization_from_the_backend(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, forward_client_token=False, opaque_tokens="reject")
    token = valid()
    resp = await client.post(
        "/mcp", headers={"Authorization": f"Bearer {token}", "authorization_": "x", "X-Other": "1"}, data=b"{}"
    )
    assert resp.status == 200
    seen = backend.last
    assert not seen.has("Authorization")
    assert all(token not in value for _, value in seen.headers)
    assert seen.get("X-Other") == "1"


async def test_forward_client_token_default_passes_it(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    token = valid()
    await client.post("/mcp", headers={"Authorization": f"Bearer {token}"}, data=b"{}")
    assert backend.last.getall("Authorization") == [f"Bearer {token}"]


async def test_required_scopes(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, required_scopes=["mcp:tools", "mcp:read"])
    lacking = valid(scope="mcp:read")
    resp = await client.post("/mcp", headers={"Authorization": f"Bearer {lacking}"}, data=b"{}")
    assert resp.status == 403
    params = challenge(resp)
    assert params["error"] == "insufficient_scope"
    assert set(params["scope"].split()) == {"mcp:tools", "mcp:read"}
    assert params["resource_metadata"] == RM_MCP
    assert (await resp.json())["error"] == "insufficient_scope"
    assert backend.seen == []
    assert sample(metrics_of(client), "mcp_sidecar_auth_rejections_total", reason="insufficient_scope") == 1

    for good in (valid(scope="mcp:read mcp:tools extra"), valid(scp=["mcp:tools", "mcp:read"])):
        assert (await client.post("/mcp", headers={"Authorization": f"Bearer {good}"}, data=b"{}")).status == 200


async def test_challenges_carry_scope_when_scopes_are_configured(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, required_scopes=["mcp:tools"])
    resp = await client.get("/mcp", headers={"Authorization": f"Bearer {valid()}"})
    assert resp.status == 403
    assert challenge(resp)["scope"] == "mcp:tools"


async def test_authorization_over_16_kb_is_431(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    at_limit = "Bearer " + "a" * (16 * 1024 - 7)
    resp = await client.get("/mcp", headers={"Authorization": at_limit})
    assert resp.status == 200  # an opaque token of exactly 16 KB is read and passes
    resp = await client.get("/mcp", headers={"Authorization": at_limit + "a"})
    assert resp.status == 431
    assert (await resp.json())["error"] == "invalid_request"
    assert len(backend.seen) == 1
    resp = await client.get("/mcp", headers={"Authorization": "Bearer " + "b" * 40_000})
    assert resp.status == 431


async def test_resource_metadata_follows_the_requested_path(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)
    for path, expected in [("/mcp", RM_MCP), ("/", RM_ROOT), ("/other/deep", f"{RM_ROOT}/other/deep")]:
        resp = await client.get(path)
        assert resp.status == 401
        assert challenge(resp)["resource_metadata"] == expected


@pytest.mark.parametrize(
    "raw_path",
    ["/mcp%22,%20error=%22insufficient_scope", "/mcp%0d%0aSet-Cookie:%20x=1", "/%E2%98%83/mcp", "/mcp%5C%22"],
)
async def test_hostile_paths_cannot_shape_the_challenge(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], raw_path: str
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)
    url = URL(f"http://{client.server.host}:{client.server.port}{raw_path}", encoded=True)
    async with client.session.get(url) as resp:
        assert resp.status == 401
        value = resp.headers["WWW-Authenticate"]
        assert "Set-Cookie" not in resp.headers
    assert all(0x20 <= ord(ch) <= 0x7E for ch in value)
    assert value.startswith('Bearer resource_metadata="')
    assert value.count('"') == 2, value  # one parameter, nothing injected
