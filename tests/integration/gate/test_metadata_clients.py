"""What real MCP clients need from the metadata documents and the challenge (issue 13):

* ``public_url=https://host/tenant`` behind a prefix-stripping ingress: the document at RFC 9728 §3.1's place,
  ``/.well-known/oauth-protected-resource/tenant/mcp``, names ``https://host/tenant/mcp`` (it named
  ``…/tenant/tenant/mcp``, which the TypeScript SDK refuses).
* ``OPTIONS`` on the metadata documents answers a browser's CORS preflight (was 403 from the proxy path).
* The gate's 401 carries ``scope="…"`` when ``required_scopes`` is set (MCP 2025-11-25 scope selection).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar.metadata import ResourceMetadata
from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import expired

TENANT = "https://mcp.example.com/tenant"


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        # RFC 9728 §3.1 placement (what the TypeScript SDK fetches without the challenge's hint)
        ("/.well-known/oauth-protected-resource/tenant/mcp", TENANT + "/mcp"),
        ("/.well-known/oauth-protected-resource/tenant", TENANT),
        # the challenge's hint, prefix stripped by the ingress, and not stripped
        ("/.well-known/oauth-protected-resource/mcp", TENANT + "/mcp"),
        ("/tenant/.well-known/oauth-protected-resource/mcp", TENANT + "/mcp"),
        ("/.well-known/oauth-protected-resource", TENANT),
    ],
)
async def test_path_prefixed_public_url_names_the_right_resource(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], path: str, resource: str
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, public_url=TENANT)
    resp = await client.get(path)
    assert resp.status == 200
    assert (await resp.json())["resource"] == resource


@given(segments=st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=0, max_size=3))
@settings(max_examples=60, deadline=None)
def test_rfc9728_placement_round_trips(segments: list[str]) -> None:
    """For every resource under public_url, the document at RFC 9728 §3.1's place names that resource."""
    meta = ResourceMetadata(URL(TENANT), ["https://as.example"], [])
    path = "/tenant" + "".join("/" + s for s in segments)
    resource = "https://mcp.example.com" + path
    assert meta.resource_for(path) == resource


@pytest.mark.parametrize(
    "path", ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp",
             "/tenant/.well-known/oauth-protected-resource/mcp"]
)
async def test_metadata_preflight_is_answered(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], path: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, public_url=TENANT)
    resp = await client.options(path, headers={
        "Origin": "https://inspector.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "mcp-protocol-version",
    })
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "mcp-protocol-version" in resp.headers["Access-Control-Allow-Headers"].lower()
    assert backend.seen == []


@pytest.mark.parametrize("auth", [None, "Bearer not-a-jwt", f"Bearer {expired()}", "Basic dXNlcjpwdw=="])
async def test_gate_401_names_the_required_scopes(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], auth: str | None
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, required_scopes=["mcp:write", "mcp:read"], opaque_tokens="reject")
    resp = await client.post("/mcp", headers={"Authorization": auth} if auth else {}, data=b"{}")
    assert resp.status == 401
    assert 'scope="mcp:read mcp:write"' in resp.headers["WWW-Authenticate"]


async def test_gate_401_without_required_scopes_has_no_scope(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", data=b"{}")
    assert resp.status == 401
    assert "scope=" not in resp.headers["WWW-Authenticate"]
