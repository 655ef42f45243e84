"""Attacks on the relay's backend connection pool, each through the full sidecar to an h11-parsed backend.

Each test is an attack from issue 11 that worked on the old relay: framing sniffed from client bytes, a
backend's extra response served to the next request, an idle connection's unsolicited bytes, a POST
replayed on a fresh connection.
"""

from __future__ import annotations

import asyncio

from sidecar.app import METRICS
from tests.integration.gate.helpers import sample
from tests.security.conftest import SidecarFor
from tests.support.h11_backend import Got, H11Backend, ok
from tests.support.jwt_tokens import valid

SMUGGLED = b"POST /mcp/admin-only HTTP/1.1\r\nHost: x\r\nX-Forwarded-User: admin\r\nContent-Length: 0\r\n\r\n"


async def test_framing_is_never_sniffed_from_a_client_header(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    client = await sidecar_for(backend)
    size = 300 * 1024  # over the relay's small-body threshold: the body is streamed
    body = b"a" * (size - len(SMUGGLED)) + SMUGGLED
    for header in ({"X-Note": "transfer-encoding: chunked"}, {"X-Transfer-Encoding": "chunked"}):
        resp = await client.post("/mcp", data=body, headers={"Authorization": "Bearer t", **header})
        assert resp.status == 200
        await resp.read()
    assert backend.errors == []
    assert [(g.method, g.target) for g in backend.requests] == [(b"POST", b"/mcp")] * 2
    assert all(g.body == body for g in backend.requests)


async def test_a_second_response_in_the_same_segment_is_never_served_to_the_next_request(
    backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    async def respond(got: Got, index: int) -> bytes:
        if index == 0:
            return ok(b"first") + ok(b"SMUGGLED")
        return ok(b"answer to " + got.target)

    backend.respond = respond
    client = await sidecar_for(backend)
    first = await client.get("/mcp/1", headers={"Authorization": "Bearer t"})
    assert await first.read() == b"first"
    second = await client.get("/mcp/2", headers={"Authorization": "Bearer t"})
    assert await second.read() == b"answer to /mcp/2"
    assert sample(client.app[METRICS], "mcp_sidecar_backend_errors_total", kind="unsolicited") == 1  # type: ignore[index]


async def test_bytes_on_an_idle_connection_close_it(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    async def respond(got: Got, index: int) -> bytes:
        return ok(b"answer to " + got.target)

    backend.respond = respond
    client = await sidecar_for(backend)
    metrics = client.app[METRICS]  # type: ignore[index]
    first = await client.get("/mcp/1", headers={"Authorization": "Bearer t"})
    assert await first.read() == b"answer to /mcp/1"
    # The start of a response nobody asked for: on a reused connection it would swallow the next answer.
    backend.writers[0].write(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nSMUGGLED")
    for _ in range(100):  # until the sidecar has seen the bytes (bounded: on the old relay it never counts)
        if sample(metrics, "mcp_sidecar_backend_errors_total", kind="unsolicited"):
            break
        await asyncio.sleep(0.01)
    second = await client.get("/mcp/2", headers={"Authorization": "Bearer t"})
    assert await second.read() == b"answer to /mcp/2"
    assert sample(metrics, "mcp_sidecar_backend_errors_total", kind="unsolicited") == 1
    assert backend.connections == 2


async def test_a_post_the_backend_may_have_run_is_never_sent_twice(
    backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    async def respond(got: Got, index: int) -> bytes | None:
        if index == 1:
            return None  # executed, then the connection dropped before any response byte
        return ok(b"answer to " + got.method)

    backend.respond = respond
    client = await sidecar_for(backend)
    assert await (await client.get("/mcp", headers={"Authorization": "Bearer t"})).read() == b"answer to GET"
    call = b'{"jsonrpc":"2.0","method":"tools/call"}'
    resp = await client.post("/mcp", data=call, headers={"Authorization": "Bearer t"})
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"
    assert [g.method for g in backend.requests] == [b"GET", b"POST"]  # the POST ran once


async def test_an_idempotent_request_is_retried_once_on_a_fresh_connection(
    backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    async def respond(got: Got, index: int) -> bytes | None:
        return None if index == 1 else ok(b"answer %d" % index)

    backend.respond = respond
    client = await sidecar_for(backend)
    assert await (await client.get("/mcp", headers={"Authorization": "Bearer t"})).read() == b"answer 0"
    resp = await client.get("/mcp", headers={"Authorization": "Bearer t"})
    assert (resp.status, await resp.read()) == (200, b"answer 2")
    assert backend.connections == 2


async def test_a_body_cut_off_by_its_client_never_prefixes_the_next_request(
    backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    client = await sidecar_for(backend)
    port = client.server.port
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 300 * 1024
    head = b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer attacker\r\nContent-Length: %d\r\n\r\n"
    writer.write(head % size)
    writer.write(b"a" * (size // 2) + b"POST /mcp/admin-only HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n")
    await writer.drain()
    writer.close()  # gone before its declared length: the backend connection must not be reused
    resp = await client.post("/mcp", data=b'{"next":"user"}', headers={"Authorization": "Bearer victim"})
    assert resp.status == 200
    assert await resp.read() == b"POST /mcp #0"
    (got,) = backend.requests
    assert got.body == b'{"next":"user"}'
    assert got.get("Authorization") == b"Bearer victim"


async def test_framing_is_never_sniffed_from_an_injected_claim(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    client = await sidecar_for(backend, inject_headers={"X-Forwarded-User": "{claims.sub}"})
    body = b"b" * (300 * 1024 - len(SMUGGLED)) + SMUGGLED
    token = valid(sub="transfer-encoding: chunked")  # decode-only gate: the claim is the caller's to choose
    resp = await client.post("/mcp", data=body, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert backend.errors == []
    (got,) = backend.requests
    assert got.body == body
    assert got.getall("X-Forwarded-User") == [b"transfer-encoding: chunked"]
