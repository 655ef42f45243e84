"""Origin checks (DNS rebinding), CORS for allowed browser origins, RFC 9728 metadata, health endpoints."""

from __future__ import annotations

import pytest

from tests.integration.gate.helpers import PUBLIC, SidecarFactory, metrics_of, sample
from tests.support.backends import EchoBackend, fixed
from tests.support.jwt_tokens import valid

AUTH = {"Authorization": f"Bearer {valid()}"}
APP_ORIGIN = "https://app.example.org"


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://mcp.example.com", "https://mcp.example.com:8443", "null", "*", ""]
)
async def test_foreign_origin_is_403_from_the_sidecar(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], origin: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.post("/mcp", headers={**AUTH, "Origin": origin}, data=b"{}")
    assert resp.status == 403
    assert (await resp.json())["error"] == "forbidden_origin"
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert backend.seen == []


async def test_foreign_origin_is_refused_before_the_token_is_looked_at(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers={"Origin": "https://evil.example"}, data=b"{}")
    assert resp.status == 403
    assert backend.seen == []


@pytest.mark.parametrize("origin", [PUBLIC, APP_ORIGIN, "HTTPS://MCP.EXAMPLE.COM"])
async def test_allowed_origins_pass_and_are_rewritten_to_the_backend_origin(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], origin: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.post("/mcp", headers={**AUTH, "Origin": origin}, data=b"{}")
    assert resp.status == 200
    assert backend.last.getall("Origin") == [upstream]
    assert resp.headers["Access-Control-Allow-Origin"] == origin
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"mcp-session-id", "www-authenticate"} <= exposed


async def test_cors_keeps_the_backends_vary(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    # A cache must still key on what the backend varied on (here the encoding) as well as on Origin.
    backend, upstream = echo
    backend.reply = fixed(200, b"{}", [("Vary", "Accept-Encoding")], "application/json")
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.post("/mcp", headers={**AUTH, "Origin": APP_ORIGIN}, data=b"{}")
    assert resp.status == 200
    varied = {v.strip().lower() for value in resp.headers.getall("Vary") for v in value.split(",")}
    assert {"accept-encoding", "origin"} <= varied


async def test_no_origin_is_a_non_browser_client_and_passes(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 200
    assert not backend.last.has("Origin")
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_public_url_with_port_is_its_own_origin(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, public_url="http://127.0.0.1:8080/prefix")
    resp = await client.post("/mcp", headers={**AUTH, "Origin": "http://127.0.0.1:8080"}, data=b"{}")
    assert resp.status == 200
    resp = await client.post("/mcp", headers={**AUTH, "Origin": "http://127.0.0.1:8081"}, data=b"{}")
    assert resp.status == 403


@pytest.mark.parametrize("public_host", ["127.0.0.1", "localhost", "[::1]"])
@pytest.mark.parametrize("origin_host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST"])
async def test_a_loopback_public_url_accepts_its_loopback_aliases_on_the_same_port(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], public_host: str, origin_host: str
) -> None:
    # The conformance suite's dns-rebinding-protection scenario, found failing through the sidecar only:
    # a sidecar published as http://127.0.0.1:8080 refused a browser page at http://localhost:8080 (403) while
    # the SDK server behind it accepts every loopback name. Those names are one machine and one port, so no
    # rebinding is possible between them; a foreign name or another port stays refused.
    _, upstream = echo
    client = await start_sidecar(upstream, public_url=f"http://{public_host}:8080")
    resp = await client.post("/mcp", headers={**AUTH, "Origin": f"http://{origin_host}:8080"}, data=b"{}")
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == f"http://{origin_host}:8080"
    for foreign in (f"http://{origin_host}:8081", f"https://{origin_host}:8080", "http://127.0.0.2:8080",
                    "http://localhost.evil.example:8080", "http://evil.example:8080"):  # fmt: skip
        refused = await client.post("/mcp", headers={**AUTH, "Origin": foreign}, data=b"{}")
        assert refused.status == 403, foreign


async def test_a_public_hostname_gets_no_loopback_aliases(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)  # public URL https://mcp.example.com
    for origin in ("http://localhost", "https://localhost", "http://127.0.0.1", "https://127.0.0.1:443"):
        resp = await client.post("/mcp", headers={**AUTH, "Origin": origin}, data=b"{}")
        assert resp.status == 403, origin


async def test_preflight_is_unauthenticated_204(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.options(
        "/mcp",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id, last-event-id, "
            "mcp-param-x, mcp-protocol-version, x-unrelated",
        },
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "mcp-session-id",
        "last-event-id",
        "mcp-param-x",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
    } <= allowed
    assert "x-unrelated" not in allowed
    methods = {m.strip() for m in resp.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    assert "Origin" in resp.headers.get("Vary", "")
    assert backend.seen == []


async def test_preflight_from_a_foreign_origin_is_403(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.options(
        "/mcp", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert backend.seen == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"}, 401)],
)
async def test_401s_to_allowed_origins_carry_cors(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], headers: dict[str, str], status: int
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream, allowed_origins=[APP_ORIGIN])
    resp = await client.post("/mcp", headers={**headers, "Origin": APP_ORIGIN}, data=b"{}")
    assert resp.status == status
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "WWW-Authenticate" in resp.headers["Access-Control-Expose-Headers"]
    assert "Mcp-Session-Id" in resp.headers["Access-Control-Expose-Headers"]


async def test_502_to_allowed_origins_carries_cors(start_sidecar: SidecarFactory) -> None:
    client = await start_sidecar("http://127.0.0.1:1", allowed_origins=[APP_ORIGIN])
    resp = await client.post("/mcp", headers={**AUTH, "Origin": APP_ORIGIN}, data=b"{}")
    assert resp.status == 502
    assert resp.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


# --- RFC 9728 protected-resource metadata ------------------------------------------------------------------


async def test_metadata_documents(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(
        upstream, authorization_servers=["https://idp.example.com"], required_scopes=["mcp:tools"]
    )
    root = await client.get("/.well-known/oauth-protected-resource")
    assert root.status == 200
    doc = await root.json()
    assert doc["resource"] == PUBLIC
    assert doc["authorization_servers"] == ["https://idp.example.com"]
    assert doc["scopes_supported"] == ["mcp:tools"]
    assert doc["bearer_methods_supported"] == ["header"]

    mcp = await client.get("/.well-known/oauth-protected-resource/mcp")
    assert mcp.status == 200
    mdoc = await mcp.json()
    assert mdoc["resource"] == PUBLIC + "/mcp"
    assert mdoc["authorization_servers"] == ["https://idp.example.com"]

    port = upstream.rsplit(":", 1)[1]
    for text in (await root.text(), await mcp.text()):
        assert "127.0.0.1" not in text and port not in text
    assert backend.seen == []  # served by the sidecar, never the backend's


async def test_metadata_needs_no_token_and_the_401_points_at_it(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    _, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", data=b"{}")
    assert resp.status == 401
    pointer = resp.headers["WWW-Authenticate"].split('resource_metadata="')[1].rstrip('"')
    assert pointer == PUBLIC + "/.well-known/oauth-protected-resource/mcp"
    doc = await (await client.get(pointer.removeprefix(PUBLIC))).json()
    assert doc["resource"] == PUBLIC + "/mcp"


async def test_public_url_with_a_path_prefix(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    public = "https://gw.example.com/tenants/a"
    client = await start_sidecar(upstream, public_url=public + "/")
    # An ingress may strip the prefix or not: both spellings of the documents are served.
    for path in ("/.well-known/oauth-protected-resource/mcp", "/tenants/a/.well-known/oauth-protected-resource/mcp"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert (await resp.json())["resource"] == public + "/mcp"
    root = await client.get("/.well-known/oauth-protected-resource")
    assert (await root.json())["resource"] == public
    unauth = await client.post("/mcp", data=b"{}")
    assert unauth.headers["WWW-Authenticate"] == (
        f'Bearer resource_metadata="{public}/.well-known/oauth-protected-resource/mcp"'
    )
    unauth = await client.post("/tenants/a/mcp", data=b"{}")
    assert f'"{public}/.well-known/oauth-protected-resource/mcp"' in unauth.headers["WWW-Authenticate"]
    # The backend's paths appear under the public URL unchanged: what reaches it is what was asked for.
    await client.post("/mcp", headers=AUTH, data=b"{}")
    assert backend.last.raw_path == "/mcp"
    await client.post("/tenants/a/mcp", headers=AUTH, data=b"{}")
    assert backend.last.raw_path == "/tenants/a/mcp"


# --- health ---------------------------------------------------------------------------------------------------


async def test_healthz_and_readyz(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    assert backend.seen == []


async def test_readyz_does_not_depend_on_the_backend(start_sidecar: SidecarFactory) -> None:
    client = await start_sidecar("http://127.0.0.1:1")
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/healthz")).status == 200


# --- metrics ----------------------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_status_and_rejections_by_reason(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, required_scopes=["s"])
    metrics = metrics_of(client)
    good = valid(scope="s")
    for _ in range(3):
        assert (await client.post("/mcp", headers={"Authorization": f"Bearer {good}"}, data=b"{}")).status == 200
    await client.post("/mcp", data=b"{}")
    await client.post("/mcp", headers={"Authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"}, data=b"{}")
    await client.post("/mcp", headers={"Authorization": f"Bearer {valid()}"}, data=b"{}")
    await client.post("/mcp", headers={"Authorization": "Bearer " + "a" * 17000}, data=b"{}")
    await client.post("/mcp", headers={"Origin": "https://evil.example"}, data=b"{}")
    assert sample(metrics, "mcp_sidecar_requests_total", status="200") == 3
    assert sample(metrics, "mcp_sidecar_requests_total", status="401") == 2
    assert sample(metrics, "mcp_sidecar_requests_total", status="403") == 2
    assert sample(metrics, "mcp_sidecar_requests_total", status="431") == 1
    assert sample(metrics, "mcp_sidecar_auth_rejections_total", reason="missing_token") == 1
    assert sample(metrics, "mcp_sidecar_auth_rejections_total", reason="expired") == 1
    assert sample(metrics, "mcp_sidecar_auth_rejections_total", reason="insufficient_scope") == 1
    assert sample(metrics, "mcp_sidecar_request_duration_seconds_count") == 8
    assert len(backend.seen) == 3
