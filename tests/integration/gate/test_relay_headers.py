"""What the backend sees and what the client gets back: headers, paths, bodies, statuses (issue 3, DESIGN §10)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend, Seen, fixed
from tests.support.jwt_tokens import valid

TOKEN = valid()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def url_of(client: object, raw: str) -> URL:
    server = client.server  # type: ignore[attr-defined]
    return URL(f"http://{server.host}:{server.port}{raw}", encoded=True)


async def test_hop_by_hop_headers_are_removed(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post(
        "/mcp",
        headers={
            **AUTH,
            "Connection": "keep-alive, X-Custom-Hop, x_other_hop",
            "X-Custom-Hop": "must not pass",
            "X-Other-Hop": "must not pass either",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "h2c",
            "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
            "Proxy-Connection": "keep-alive",
            "Trailer": "X-Checksum",
            "X-End-To-End": "passes",
        },
        data=b"{}",
    )
    assert resp.status == 200
    seen = backend.last
    for name in (
        "X-Custom-Hop",
        "X-Other-Hop",
        "Keep-Alive",
        "TE",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Trailer",
    ):
        assert not seen.has(name), f"{name} reached the backend"
    # Connection is the sidecar's own business with the backend; the client's options never pass.
    assert all("x-custom-hop" not in v.lower() for v in seen.getall("Connection"))
    assert seen.get("X-End-To-End") == "passes"
    assert seen.get("Authorization") == f"Bearer {TOKEN}"


async def test_hop_by_hop_headers_of_the_response_are_removed(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    backend.reply = fixed(
        200,
        b"{}",
        [
            ("Connection", "X-Backend-Hop"),
            ("X-Backend-Hop", "secret"),
            ("Keep-Alive", "timeout=99"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Visible", "yes"),
        ],
        "application/json",
    )
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 200
    assert "X-Backend-Hop" not in resp.headers
    assert "Proxy-Authenticate" not in resp.headers
    assert resp.headers.get("Keep-Alive") != "timeout=99"
    assert resp.headers["X-Visible"] == "yes"


async def test_forwarded_headers_and_host(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post(
        "/mcp",
        headers={
            **AUTH,
            "Host": "mcp.example.com",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "http",  # a client's claim is replaced, not trusted
            "X-Forwarded-Host": "evil.example",
        },
        data=b"{}",
    )
    assert resp.status == 200
    seen = backend.last
    assert seen.getall("Host") == [URL(upstream).raw_authority]
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]  # the peer; a client's chain is not believed
    assert seen.getall("X-Forwarded-Proto") == ["https"]  # the public URL's scheme
    assert seen.getall("X-Forwarded-Host") == ["mcp.example.com"]


async def test_forwarded_for_without_prior_hops(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    await client.get("/mcp", headers=AUTH)
    assert backend.last.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert backend.last.get("X-Forwarded-Host") == f"{client.server.host}:{client.server.port}"


MCP_REQUEST_HEADERS = {
    "Mcp-Session-Id": "session-abc-123",
    "MCP-Protocol-Version": "2026-07-28",
    "Last-Event-ID": "stream-1:42",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "echo",
    "Mcp-Param-Foo": "bar baz",
    "Mcp-Param-Unknown-Future": "x",
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}


async def test_mcp_headers_pass_both_ways(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    response_headers = [
        ("Mcp-Session-Id", "session-from-backend"),
        ("MCP-Protocol-Version", "2025-11-25"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "echo"),
        ("Mcp-Param-Foo", "from backend"),
    ]
    backend.reply = fixed(200, b'{"jsonrpc":"2.0","id":1,"result":{}}', response_headers, "application/json")
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers={**AUTH, **MCP_REQUEST_HEADERS}, data=b'{"jsonrpc":"2.0"}')
    assert resp.status == 200
    seen = backend.last
    for name, value in MCP_REQUEST_HEADERS.items():
        assert seen.getall(name) == [value], name
    for name, value in response_headers:
        assert resp.headers.getall(name) == [value], name


async def test_delete_and_get_pass(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    for method in ("GET", "DELETE", "PUT", "PATCH"):
        resp = await client.request(method, "/mcp", headers={**AUTH, "Mcp-Session-Id": "s"})
        assert resp.status == 200
        assert backend.last.method == method
        assert backend.last.get("Mcp-Session-Id") == "s"


JSONRPC_ERROR = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Invalid params","data":{"x":[1,2]}}}'


@pytest.mark.parametrize(
    ("status", "body", "ctype", "extra"),
    [
        (202, b"", None, []),
        (400, JSONRPC_ERROR, "application/json", []),
        (
            404,
            b'{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}',
            "application/json",
            [],
        ),
        (405, b"Method Not Allowed", "text/plain", [("Allow", "GET, POST")]),
        (421, b"Misdirected Request", "text/plain", []),
        (200, JSONRPC_ERROR, "application/json", []),
        (500, b'{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"boom"}}', "application/json", []),
        (401, b'{"error":"backend says no"}', "application/json", [("WWW-Authenticate", 'Bearer realm="backend"')]),
    ],
)
async def test_backend_statuses_and_bodies_pass_unchanged(
    start_sidecar: SidecarFactory,
    echo: tuple[EchoBackend, str],
    status: int,
    body: bytes,
    ctype: str | None,
    extra: list[tuple[str, str]],
) -> None:
    backend, upstream = echo
    backend.reply = fixed(status, body, extra, ctype)
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers=AUTH, data=b'{"jsonrpc":"2.0","id":7,"method":"x"}')
    assert resp.status == status
    assert await resp.read() == body
    if ctype:
        assert resp.headers["Content-Type"].startswith(ctype)
    for name, value in extra:
        assert resp.headers[name] == value


@pytest.mark.parametrize(
    "raw",
    [
        "/mcp/a%2Fb?x=1&x=2&y",
        "/mcp?q=%E2%9C%93&a=b%26c&empty=&=v",
        "/mcp/%7Euser/./x/../y?z=%2e",
        "/mcp//double//slash",
        "/MCP/Case?Key=Value",
        "/mcp;param=1?a=1;b=2",
        "/mcp/line%0Abreak%0D%0A?q=%0A",  # encoded CR/LF are path bytes like any other
        "/",
    ],
)
async def test_path_and_query_reach_the_backend_byte_for_byte(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], raw: str
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    async with client.session.get(url_of(client, raw), headers=AUTH) as resp:
        assert resp.status == 200
    assert backend.last.raw_path == raw


async def test_upstream_with_a_base_path(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream + "/base")
    async with client.session.get(url_of(client, "/mcp/a%2Fb?x=1"), headers=AUTH) as resp:
        assert resp.status == 200
    assert backend.last.raw_path == "/base/mcp/a%2Fb?x=1"


async def test_repeated_set_cookie_stay_separate_and_nothing_is_stored(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    cookies = [
        ("Set-Cookie", "a=1; Path=/; HttpOnly"),
        ("Set-Cookie", "b=2; Path=/; Secure"),
        ("X-Multi", "1"),
        ("X-Multi", "2"),
    ]

    async def reply(request: web.Request, seen: Seen) -> web.StreamResponse:
        if request.query.get("set") == "1":
            return await fixed(200, b"{}", cookies, "application/json")(request, seen)
        return web.json_response({})

    backend.reply = reply
    # The client keeps no cookies either, so anything the backend sees later would come from the proxy.
    client = await start_sidecar(upstream, client_kwargs={"cookie_jar": aiohttp.DummyCookieJar()})
    resp = await client.get("/mcp?set=1", headers=AUTH)
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/; HttpOnly", "b=2; Path=/; Secure"]
    assert resp.headers.getall("X-Multi") == ["1", "2"]
    await client.get("/mcp", headers=AUTH)
    assert not backend.last.has("Cookie"), "the proxy stored a cookie and replayed it"
    await client.get("/mcp", headers={**AUTH, "Cookie": "a=1; b=2"})
    assert backend.last.getall("Cookie") == ["a=1; b=2"]


async def test_large_request_body_is_streamed_intact(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    big = bytes(range(256)) * 8192  # 2 MiB, above the small-body fast path
    resp = await client.post("/mcp", headers=AUTH, data=big)
    assert resp.status == 200
    assert backend.last.body == big

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 1000

    resp = await client.post("/mcp", headers=AUTH, data=chunks())  # chunked, no Content-Length
    assert resp.status == 200
    assert backend.last.body == b"".join(bytes([i]) * 1000 for i in range(50))


async def test_large_response_body_passes_intact(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    big = json.dumps({"data": "x" * 3_000_000}).encode()
    backend.reply = fixed(200, big, [], "application/json")
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert await resp.read() == big


async def test_compressed_bodies_pass_as_the_backend_encoded_them(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    raw = gzip.compress(b'{"jsonrpc":"2.0","id":1,"result":{}}')
    backend.reply = fixed(200, raw, [("Content-Encoding", "gzip")], "application/json")
    client = await start_sidecar(upstream, client_kwargs={"auto_decompress": False})
    resp = await client.post("/mcp", headers={**AUTH, "Accept-Encoding": "gzip"}, data=b"{}")
    assert resp.headers["Content-Encoding"] == "gzip"
    assert await resp.read() == raw
    assert backend.last.get("Accept-Encoding") == "gzip"


async def test_no_accept_encoding_is_added(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream, client_kwargs={"skip_auto_headers": ["Accept-Encoding", "User-Agent"]})
    await client.post("/mcp", headers=AUTH, data=b"{}")
    assert not backend.last.has("Accept-Encoding")
    assert not backend.last.has("User-Agent")
