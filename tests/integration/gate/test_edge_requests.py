"""Unusual but legal (or merely possible) requests: raw wire tests of what reaches the backend."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend, fixed
from tests.support.jwt_tokens import expired, unsigned, valid


async def raw_exchange(host: str, port: int, request: bytes) -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def request_bytes(target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: mcp.example.com", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_absolute_form_target_reaches_the_backend_in_origin_form(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    # RFC 9112 §3.2.2: a server must accept absolute-form; a proxy must not pass a foreign authority on,
    # or a backend that honours absolute-form would act on Host "evil.example" despite the Host rewrite.
    backend, upstream = echo
    client = await start_sidecar(upstream)
    auth = b"Authorization: Bearer " + valid().encode()
    status, _, _ = await raw_exchange(
        client.server.host, client.server.port, request_bytes(b"http://evil.example/mcp?x=1", auth)
    )
    assert status == 200
    assert backend.last.raw_path == "/mcp?x=1"
    assert backend.last.getall("Host") == [upstream.removeprefix("http://")]


@pytest.mark.parametrize("second_name", [b"Authorization", b"authorization", b"AUTHORIZATION"])
async def test_a_second_authorization_header_is_400_and_reaches_nobody(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], second_name: bytes
) -> None:
    # Authorization is a singleton field (RFC 9110 §11.6.2). The gate checks one value; a backend that reads
    # another one (the last, or all joined) must never receive a bearer the gate did not check.
    backend, upstream = echo
    client = await start_sidecar(upstream)
    checked = valid()
    smuggled = unsigned({"exp": 9999999999, "sub": "admin", "scope": "admin"})
    for second in (smuggled, expired()):
        status, _, body = await raw_exchange(
            client.server.host,
            client.server.port,
            request_bytes(
                b"/mcp", b"Authorization: Bearer " + checked.encode(), second_name + b": Bearer " + second.encode()
            ),
        )
        assert status == 400
        assert json.loads(body)["error"] == "invalid_request"
    assert backend.seen == []


async def test_head_passes_headers_without_a_body(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    status, head, body = await raw_exchange(
        client.server.host,
        client.server.port,
        request_bytes(b"/mcp", b"Authorization: Bearer " + valid().encode(), method=b"HEAD"),
    )
    assert status == 200
    assert b"application/json" in head
    assert body == b""
    assert backend.last.method == "HEAD"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_pass(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], status: int
) -> None:
    backend, upstream = echo
    backend.reply = fixed(status, b"", [("ETag", '"v1"')])
    client = await start_sidecar(upstream)
    resp = await client.get("/mcp", headers={"Authorization": f"Bearer {valid()}"})
    assert resp.status == status
    assert resp.headers["ETag"] == '"v1"'
    assert await resp.read() == b""


async def test_empty_post_body(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    client = await start_sidecar(upstream)
    resp = await client.post("/mcp", headers={"Authorization": f"Bearer {valid()}"}, data=b"")
    assert resp.status == 200
    assert backend.last.body == b""


async def test_keep_alive_reuse_across_requests(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    # Many sequential requests on one client connection, tokens changing between them: each one is judged.
    backend, upstream = echo
    client = await start_sidecar(upstream)
    for i in range(30):
        token = valid() if i % 3 else expired()
        resp = await client.post("/mcp", headers={"Authorization": f"Bearer {token}"}, data=str(i).encode())
        assert resp.status == (200 if i % 3 else 401)
        await resp.read()
    assert [s.body for s in backend.seen] == [str(i).encode() for i in range(30) if i % 3]


async def test_expect_100_continue_upload(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    # curl sends Expect: 100-continue for larger bodies and waits for the interim answer before sending it.
    backend, upstream = echo
    client = await start_sidecar(upstream)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        request_bytes(
            b"/mcp",
            b"Authorization: Bearer " + valid().encode(),
            b"Expect: 100-continue",
            b"Content-Length: " + str(len(body)).encode(),
            method=b"POST",
        )
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(body)
    await writer.drain()
    final = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert final.startswith(b"HTTP/1.1 200")
    assert backend.last.body == body
