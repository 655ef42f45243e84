"""Differential suite: h11, the reference HTTP/1.1 implementation, on both sides of the real sidecar (issue 11).

Requests: hypothesis generates methods, targets, header names and values (non-ASCII, latin-1 bytes, lookalikes of
framing headers), bodies of every size around the relay's thresholds and either framing, written to the sidecar
in random pieces at random speeds. The backend parses with h11 and must see exactly one well-framed request per
client request, body byte-identical, each client header that the policy keeps with its bytes unchanged.

Responses: the backend answers with generated raw responses (Content-Length, chunked with extensions and trailers,
close-delimited, 1xx first, 204/304, HEAD, extra bytes, early close). The client parses with h11 and must see
exactly the status, headers and body h11 says the backend sent, or a clean 502, or (a stream already under way)
a body cut short, never anything else.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.conftest import SidecarFor
from tests.support.h11_backend import Got, H11Backend

# Names the relay drops or sets itself (RFC 9110 §7.6.1 hop-by-hop, framing, forwarding), normalized.
POLICY_DROPPED = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "origin", "content-length", "expect", "forwarded", "x-real-ip",
}
SIDECAR_SET = {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "content-length",
               "transfer-encoding"}

LOOKALIKE_NAMES = [
    "X-Note", "X-Transfer-Encoding", "Transfer_Encoding", "Content_Length", "X-Content-Length", "Mcp-Session-Id",
    "Last-Event-ID", "Accept", "X-Forwarded-Host", "x_forwarded_for", "TE_", "Content-Lengths", "Mcp-Param-X",
]
LOOKALIKE_VALUES = [
    b"chunked", b"transfer-encoding: chunked", b"0", b"5", b"caf\xc3\xa9", b"caf\xe9", b"\xe2\x82\xac",
    b"\xf0\x9f\x98\x80", b"a, chunked", b"identity", b"  spaced  value", b"\x00"[:0] + b"tab\there",
]
BODY_SIZES = [0, 1, 17, 1000, 64 * 1024, 64 * 1024 + 1, 256 * 1024, 256 * 1024 + 1, 300 * 1024]


@dataclass
class ClientRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    pieces: list[int]
    pause: float

    def wire(self) -> bytes:
        head = [b"%s %s HTTP/1.1" % (self.method, self.target), b"Host: mcp.example.com",
                b"Authorization: Bearer t", b"Connection: close"]
        head += [n + b": " + v for n, v in self.headers]
        if self.chunked:
            head.append(b"Transfer-Encoding: chunked")
            body = b""
            step = max(1, len(self.body) // 3 or 1)
            for i in range(0, len(self.body), step):
                part = self.body[i : i + step]
                body += b"%x;ext=1\r\n%s\r\n" % (len(part), part)
            body += b"0\r\n\r\n"
        else:
            head.append(b"Content-Length: %d" % len(self.body))
            body = self.body
        return b"\r\n".join(head) + b"\r\n\r\n" + body


@st.composite
def client_requests(draw: st.DrawFn) -> ClientRequest:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]))
    target = b"/mcp" + draw(st.sampled_from([b"", b"/", b"?a=1", b"/x%2Fy?q=%E2%82%AC", b"/%0A"]))
    headers = draw(st.lists(st.tuples(st.sampled_from(LOOKALIKE_NAMES).map(str.encode),
                                      st.sampled_from(LOOKALIKE_VALUES)), max_size=5))
    size = draw(st.sampled_from(BODY_SIZES))
    body = bytes(draw(st.binary(min_size=min(size, 64), max_size=min(size, 64)))) * (size // 64 or 1)
    body = (body + b"z" * size)[:size]
    chunked = draw(st.booleans()) and size > 0
    pieces = draw(st.lists(st.integers(1, 4096), max_size=4))
    pause = draw(st.sampled_from([0.0, 0.0, 0.001]))
    return ClientRequest(method, target, headers, body, chunked, pieces, pause)


async def send(port: int, data: bytes, pieces: list[int], pause: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        pos = 0
        for n in pieces:
            writer.write(data[pos : pos + n])
            pos += n
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        writer.write(data[pos:])
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def client_view(raw: bytes, method: bytes = b"GET") -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """What an h11 client makes of the sidecar's answer: status, headers, body, and whether it was complete."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    status, headers, body = 0, [], b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return status, headers, body, False
        if isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers.raw_items())
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body, True
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return status, headers, body, False


def _norm(name: bytes) -> str:
    return name.decode("latin-1").lower().replace("_", "-")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=client_requests())
async def test_one_client_request_is_exactly_one_backend_request(
    req: ClientRequest, backend: H11Backend, sidecar_for: SidecarFor, _sidecars: dict[str, Any]
) -> None:
    client = _sidecars.get("client") or await sidecar_for(backend)
    _sidecars["client"] = client
    before = len(backend.requests)
    answer = await send(client.server.port, req.wire(), req.pieces, req.pause)
    status, _, _, complete = client_view(answer, req.method)
    assert (status, complete) == (200, True), answer[:300]
    assert backend.errors == []
    new = backend.requests[before:]
    assert len(new) == 1
    got: Got = new[0]
    assert (got.method, got.target, got.body) == (req.method, req.target, req.body)
    kept = [(n, v) for n, v in req.headers if _norm(n) not in POLICY_DROPPED and not _norm(n).startswith("x-forwarded")]
    seen = [(n, v) for n, v in got.headers if _norm(n) not in SIDECAR_SET and _norm(n) != "authorization"]
    assert seen == [(n, v.strip(b" \t")) for n, v in kept]
    framing = [_norm(n) for n, _ in got.headers if _norm(n) in ("content-length", "transfer-encoding")]
    assert len(framing) == (0 if not req.body and req.method in (b"GET", b"DELETE", b"OPTIONS") else 1)


HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate",
       "proxy-connection", "content-length"}
ADDED_OK = {"date", "server", "content-length", "transfer-encoding", "connection"}


@dataclass
class BackendAnswer:
    raw: bytes
    close: bool
    kind: str


@st.composite
def backend_answers(draw: st.DrawFn) -> BackendAnswer:
    kind = draw(st.sampled_from(["length", "chunked", "close", "interim", "no-body", "extra", "truncated"]))
    status = draw(st.sampled_from([200, 201, 202, 400, 404, 500]))
    extra_headers = draw(st.lists(st.tuples(
        st.sampled_from([b"X-A", b"Mcp-Session-Id", b"Set-Cookie", b"X-Name", b"Content-Type"]),
        st.sampled_from([b"1", b"s-1", b"a=b; Path=/", b"\xc5\x81ukasz", b"text/event-stream", b"application/json"]),
    ), max_size=4))
    body = draw(st.sampled_from([b"", b"x", b"data: 1\n\n", b"{}" * 500, b"y" * (256 * 1024 + 3)]))
    head = b"HTTP/1.1 %d Reason\r\n" % status + b"".join(n + b": " + v + b"\r\n" for n, v in extra_headers)
    if kind == "length":
        return BackendAnswer(head + b"Content-Length: %d\r\n\r\n" % len(body) + body, False, kind)
    if kind == "chunked":
        step = draw(st.integers(1, 70000))
        chunks = b"".join(b"%x;ext=\"v\"\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
                          for i in range(0, len(body), step))
        return BackendAnswer(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: t\r\n\r\n",
                             False, kind)
    if kind == "close":
        return BackendAnswer(head + b"Connection: close\r\n\r\n" + body, True, kind)
    if kind == "interim":
        early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        return BackendAnswer(early + head + b"Content-Length: %d\r\n\r\n" % len(body) + body, False, kind)
    if kind == "no-body":
        code = draw(st.sampled_from([204, 304]))
        return BackendAnswer(b"HTTP/1.1 %d Reason\r\n" % code + head.split(b"\r\n", 1)[1] + b"\r\n", False, kind)
    if kind == "extra":
        raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        return BackendAnswer(raw + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED", False, kind)
    cut = head + b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body
    return BackendAnswer(cut, True, kind)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=backend_answers(), method=st.sampled_from([b"GET", b"POST", b"HEAD"]))
async def test_the_client_sees_what_the_backend_sent_or_a_clean_502(
    answer: BackendAnswer, method: bytes, backend: H11Backend, sidecar_for: SidecarFor, _sidecars: dict[str, Any]
) -> None:
    client = _sidecars.get("client") or await sidecar_for(backend)
    _sidecars["client"] = client

    async def respond(got: Got, index: int) -> bytes:
        return answer.raw

    backend.respond = respond
    backend.close_after_answer = answer.close
    request = b"%s /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nConnection: close\r\n" % method
    request += b"Content-Length: 2\r\n\r\n{}" if method == b"POST" else b"\r\n"
    raw = await send(client.server.port, request, [], 0)
    want_status, want_headers, want_body, want_complete = client_view(answer.raw, method)
    status, headers, body, complete = client_view(raw, method)
    if not want_complete:
        # A response cut short: a clean 502 before anything was relayed, or the same head and a short body.
        assert (status == 502 and complete) or (status == want_status and not complete and want_body.startswith(body))
        return
    assert (status, body, complete) == (want_status, want_body, True), raw[:300]
    relayed = [(n.lower(), v) for n, v in headers]
    expected = [(n.lower(), v) for n, v in want_headers if _norm(n) not in HOP]
    assert [h for h in relayed if h[0].decode() not in ADDED_OK or h in expected] == expected
