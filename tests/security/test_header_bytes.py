"""Header bytes pass through the relay unchanged, both ways, or the exchange is refused cleanly (issue 11).

Rule for injected values (README "Security model"): an injected value is sent as its UTF-8 bytes, so a claim
``Łukasz`` reaches the backend as ``\\xc5\\x81ukasz``, exactly as a client's own UTF-8 header would.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import SidecarFor, raw_exchange
from tests.support.h11_backend import Got, H11Backend, ok
from tests.support.jwt_tokens import valid


async def test_client_header_bytes_reach_the_backend_as_sent(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    client = await sidecar_for(backend)
    port = client.server.port
    head = (
        b"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
        b"X-Cafe: caf\xc3\xa9\r\nX-Euro: \xe2\x82\xac 5\r\nX-Latin: caf\xe9\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(port, head)
    assert answer.startswith(b"HTTP/1.1 200")
    got = backend.requests[-1]
    assert got.get("X-Cafe") == b"caf\xc3\xa9"
    assert got.get("X-Euro") == b"\xe2\x82\xac 5"
    assert got.get("X-Latin") == b"caf\xe9"  # not UTF-8 at all: still the same byte


async def test_response_header_bytes_reach_the_client_as_sent(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    async def respond(got: Got, index: int) -> bytes:
        return ok(b"hi", extra=b"X-Name: \xc5\x81ukasz \xf0\x9f\x98\x80\r\n")

    backend.respond = respond
    client = await sidecar_for(backend)
    request = b"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(client.server.port, request)
    assert b"\r\nX-Name: \xc5\x81ukasz \xf0\x9f\x98\x80\r\n" in answer


async def test_a_response_header_that_cannot_be_relayed_unchanged_is_a_502(
    backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    async def respond(got: Got, index: int) -> bytes:
        return ok(b"hi", extra=b"X-Name: caf\xe9\r\n")  # latin-1 obs-text: aiohttp can only write UTF-8

    backend.respond = respond
    client = await sidecar_for(backend)
    resp = await client.get("/mcp", headers={"Authorization": "Bearer t"})
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"


@pytest.mark.parametrize("name", ["Łukasz", "Zoë 😀"])
async def test_injected_non_ascii_values_are_sent_as_utf8(
    name: str, backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    client = await sidecar_for(backend, inject_headers={"X-Forwarded-User": "{claims.name}"})
    resp = await client.get("/mcp", headers={"Authorization": f"Bearer {valid(name=name)}"})
    assert resp.status == 200
    assert backend.requests[-1].getall("X-Forwarded-User") == [name.encode("utf-8")]


async def test_no_content_type_is_invented_for_a_relayed_body(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    async def respond(got: Got, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"

    backend.respond = respond
    client = await sidecar_for(backend)
    resp = await client.get("/mcp", headers={"Authorization": "Bearer t"})
    assert (resp.status, await resp.read()) == (200, b"hi")
    assert "Content-Type" not in resp.headers
