"""Streaming: SSE event by event, byte for byte, never cut for idling; disconnects cancel; 502/504 (DESIGN §10)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from tests.integration.gate.helpers import SidecarFactory, metrics_of, sample
from tests.support.backends import EchoBackend, SseBackend, free_port
from tests.support.jwt_tokens import valid

AUTH = {"Authorization": f"Bearer {valid()}", "Accept": "text/event-stream"}


async def test_sse_events_arrive_incrementally(start_sidecar: SidecarFactory, start_backend: Any) -> None:
    sse = SseBackend([(0, b"id: 1\ndata: first\n\n"), (1.5, b"id: 2\ndata: second\n\n")])
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")))
    started = time.monotonic()
    resp = await client.post("/mcp", headers=AUTH, data=b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}')
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await resp.content.readuntil(b"\n\n")
    first_at = time.monotonic() - started
    second = await resp.content.readuntil(b"\n\n")
    second_at = time.monotonic() - started
    assert await resp.read() == b""
    assert first == b"id: 1\ndata: first\n\n"
    assert second == b"id: 2\ndata: second\n\n"
    # The first event is in the client's hands long before the backend even wrote the second one.
    assert first_at < 0.9, first_at
    assert second_at > 1.4, second_at
    assert second_at - first_at > 0.5
    assert sse.written_at[1] - sse.written_at[0] > 1.4  # the backend really paused between the events


SSE_BODY = [
    b": stream opened\n\n",
    b"retry: 1500\n\n",
    b'id: stream-7:0\nevent: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n',
    b": keep-alive\n\n",
    b"id:\ndata:no space after colon\ndata:  two spaces\n\n",
    b"id: 8\r\ndata: crlf line endings\r\n\r\n",
    b"data: multi\ndata: line\n\n",
    b"data: \xe2\x9c\x93 utf-8 \xf0\x9f\x98\x80\n\n",
    b'id: stream-7:1\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n',
]


async def test_sse_id_retry_and_comment_lines_pass_byte_for_byte(
    start_sidecar: SidecarFactory, start_backend: Any
) -> None:
    sse = SseBackend([(0.02, chunk) for chunk in SSE_BODY])
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")))
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 200
    assert resp.headers["Mcp-Session-Id"] == "s-1"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert await resp.read() == b"".join(SSE_BODY)


async def test_get_stream_with_last_event_id_reaches_the_backend(
    start_sidecar: SidecarFactory, start_backend: Any
) -> None:
    sse = SseBackend([(0, b"id: stream-7:2\ndata: resumed\n\n")])
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")))
    resp = await client.get(
        "/mcp",
        headers={**AUTH, "Last-Event-ID": "stream-7:1", "Mcp-Session-Id": "s-1", "MCP-Protocol-Version": "2025-11-25"},
    )
    assert resp.status == 200
    assert await resp.read() == b"id: stream-7:2\ndata: resumed\n\n"
    seen = sse.seen[-1]
    assert seen.method == "GET"
    assert seen.get("Last-Event-ID") == "stream-7:1"
    assert seen.get("Mcp-Session-Id") == "s-1"
    assert seen.get("MCP-Protocol-Version") == "2025-11-25"
    assert seen.get("Accept") == "text/event-stream"


async def test_idle_stream_is_not_cut_by_the_backend_timeout(start_sidecar: SidecarFactory, start_backend: Any) -> None:
    # Headers come at once; then nothing for longer than backend_timeout_seconds; then an event.
    sse = SseBackend([(0, b": open\n\n"), (2.0, b"data: after a long silence\n\n")])
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")), backend_timeout_seconds=1)
    started = time.monotonic()
    resp = await client.get("/mcp", headers=AUTH)
    assert resp.status == 200
    body = await resp.read()
    assert body == b": open\n\ndata: after a long silence\n\n"
    assert time.monotonic() - started > 1.8
    assert sse.finished.is_set()


async def test_idle_after_headers_without_any_byte_is_not_cut(
    start_sidecar: SidecarFactory, start_backend: Any
) -> None:
    sse = SseBackend([(1.8, b"data: finally\n\n")])
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")), backend_timeout_seconds=1)
    resp = await client.get("/mcp", headers=AUTH)
    assert resp.status == 200
    assert await resp.read() == b"data: finally\n\n"


async def test_client_disconnect_mid_sse_cancels_the_backend(start_sidecar: SidecarFactory, start_backend: Any) -> None:
    sse = SseBackend([(0, b"id: 1\ndata: first\n\n")], hold_open=True)
    server = await start_backend(sse.app())
    client = await start_sidecar(str(server.make_url("")))
    metrics = metrics_of(client)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert await resp.content.readuntil(b"\n\n") == b"id: 1\ndata: first\n\n"
    assert sample(metrics, "mcp_sidecar_open_streams") == 1
    gone_at = time.monotonic()
    resp.close()  # the client goes away mid-stream (in the 2026-07-28 transport, this *is* cancellation)
    await asyncio.wait_for(sse.closed.wait(), timeout=5)
    assert time.monotonic() - gone_at < 5
    assert not sse.finished.is_set()
    for _ in range(50):
        if sample(metrics, "mcp_sidecar_open_streams") == 0:
            break
        await asyncio.sleep(0.05)
    assert sample(metrics, "mcp_sidecar_open_streams") == 0


async def test_client_giving_up_before_the_answer_cancels_the_backend(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    backend.delay = 20
    client = await start_sidecar(upstream)
    pending = asyncio.ensure_future(client.post("/mcp", headers=AUTH, data=b"{}"))
    for _ in range(100):
        if backend.seen:
            break
        await asyncio.sleep(0.02)
    assert backend.seen, "the request never reached the backend"
    pending.cancel()  # the client goes away while the backend is still thinking
    await asyncio.wait_for(backend.cancelled.wait(), timeout=5)


async def test_backend_down_is_502_json(start_sidecar: SidecarFactory) -> None:
    client = await start_sidecar(f"http://127.0.0.1:{free_port()}")
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 502
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "bad_gateway"
    assert body["error_description"]
    assert sample(metrics_of(client), "mcp_sidecar_backend_errors_total", kind="unreachable") == 1


async def _closes_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _answers_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"this is not HTTP\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("misbehave", [_closes_without_answer, _answers_garbage], ids=["closes", "garbage"])
async def test_a_broken_backend_is_502(
    start_sidecar: SidecarFactory,
    misbehave: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    server = await asyncio.start_server(misbehave, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await start_sidecar(f"http://127.0.0.1:{port}")
        resp = await client.get("/mcp", headers=AUTH)
        assert resp.status == 502
        assert (await resp.json())["error"] == "bad_gateway"
    finally:
        server.close()
        await server.wait_closed()


async def test_backend_silent_past_the_timeout_is_504_json(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, upstream = echo
    backend.delay = 4
    client = await start_sidecar(upstream, backend_timeout_seconds=1)
    started = time.monotonic()
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "gateway_timeout"
    assert 0.9 < elapsed < 3.5
    assert sample(metrics_of(client), "mcp_sidecar_backend_errors_total", kind="timeout") == 1


async def test_slow_but_in_time_backend_passes(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, upstream = echo
    backend.delay = 0.4
    client = await start_sidecar(upstream, backend_timeout_seconds=1)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 200
    assert json.loads(await resp.read())["method"] == "POST"


async def test_open_streams_do_not_block_other_requests(start_sidecar: SidecarFactory, start_backend: Any) -> None:
    sse = SseBackend([(0, b"data: 1\n\n")], hold_open=True)
    sse_server = await start_backend(sse.app())
    client = await start_sidecar(str(sse_server.make_url("")))
    streams = [await client.get("/mcp", headers=AUTH) for _ in range(20)]
    try:
        for stream in streams:
            assert await stream.content.readuntil(b"\n\n") == b"data: 1\n\n"
        assert sample(metrics_of(client), "mcp_sidecar_open_streams") == 20
        # 20 long-lived streams are open; a plain request still goes through at once.
        started = time.monotonic()
        resp = await client.post("/plain", headers=AUTH, data=b"{}")
        assert resp.status == 200
        assert await resp.json() == {"plain": True}
        assert time.monotonic() - started < 2
    finally:
        for stream in streams:
            stream.close()


async def test_no_read_timeout_on_a_slow_json_body(start_sidecar: SidecarFactory, start_backend: Any) -> None:
    async def dribble(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for part in (b'{"jsonrpc":', b'"2.0","id":1,', b'"result":{}}'):
            await resp.write(part)
            await asyncio.sleep(0.7)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/mcp", dribble)
    server = await start_backend(app)
    client = await start_sidecar(str(server.make_url("")), backend_timeout_seconds=0.5)
    resp = await client.post("/mcp", headers=AUTH, data=b"{}")
    assert resp.status == 200
    assert await resp.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
