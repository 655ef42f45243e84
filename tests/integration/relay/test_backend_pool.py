"""The relay's HTTP/1.1 pool (sidecar/backend.py) against raw loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.backend import (
    READ_HIGH_WATER,
    BackendDisconnected,
    BackendPool,
    BackendPoolExhausted,
    BackendProtocolError,
    BackendRequestMismatch,
)
from sidecar.metrics import Metrics

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b""
        lower = head.lower()
        if b"content-length:" in lower:
            n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(n)
        elif b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        self.requests.append(head + body)
        return head + body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, BackendPool]]]]:
    servers: list[Server] = []
    pools: list[BackendPool] = []

    async def start(handler: Handler) -> tuple[Server, BackendPool]:
        s = Server(handler)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        s.port = s.server.sockets[0].getsockname()[1]
        servers.append(s)
        pool = BackendPool("127.0.0.1", s.port, connect_timeout=2)
        pools.append(pool)
        return s, pool

    yield start
    for p in pools:
        await p.close()
    for s in servers:
        assert s.server is not None
        s.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def get(pool: BackendPool, method: str = "GET", body: bytes | None = None, **kw: object) -> tuple[int, bytes]:
    resp = await pool.request(method, "/mcp", [("Host", "x")], body, content_length=None, headers_timeout=2, **kw)  # type: ignore[arg-type]
    data = await resp.read()
    resp.release()
    return resp.status, data


async def test_keep_alive_connections_are_reused(serve) -> None:
    async def handler(r, w, s):
        while True:
            await s.read_request(r)
            w.write(OK)

    server, pool = await serve(handler)
    for _ in range(5):
        assert await get(pool) == (200, b"ok")
    assert server.connections == 1


async def closes_on_second_request(r, w, s) -> None:
    """Answers a connection's first request; drops the connection on its second without answering, as a
    backend whose idle timeout fired just as the request went out does."""
    await s.read_request(r)
    w.write(OK)
    await w.drain()
    await r.readuntil(b"\r\n\r\n")


async def test_reused_connection_dropped_before_any_response_is_retried_once_fresh(serve) -> None:
    server, pool = await serve(closes_on_second_request)
    assert await get(pool) == (200, b"ok")
    assert await get(pool, "PUT", b'{"jsonrpc":"2.0"}') == (200, b"ok")  # idempotent (RFC 9110 §9.2.2)
    assert server.connections == 2
    assert len(server.requests) == 2  # the dropped attempt was never processed; the retry was, once


async def test_a_post_on_a_dropped_reused_connection_is_not_retried(serve) -> None:
    server, pool = await serve(closes_on_second_request)
    assert await get(pool) == (200, b"ok")
    with pytest.raises(BackendDisconnected):
        await get(pool, "POST", b'{"jsonrpc":"2.0"}')
    assert server.connections == 1


async def test_a_streamed_body_is_not_replayed(serve) -> None:
    server, pool = await serve(closes_on_second_request)
    assert await get(pool) == (200, b"ok")

    async def body() -> AsyncIterator[bytes]:
        yield b"part"

    with pytest.raises(BackendDisconnected):
        await pool.request(
            "POST", "/mcp", [("Host", "x")], body().__aiter__(), content_length=None, headers_timeout=2
        )
    assert server.connections == 1


async def test_head_response_has_no_body_whatever_its_length(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        await asyncio.sleep(5)

    _, pool = await serve(handler)
    status, data = await asyncio.wait_for(get(pool, "HEAD"), 2)
    assert (status, data) == (200, b"")


async def test_interim_100_continue_is_skipped(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)

    _, pool = await serve(handler)
    assert await get(pool, "POST", b"x") == (200, b"ok")


async def test_unsized_body_is_sent_chunked_and_arrives_whole(serve) -> None:
    async def handler(r, w, s):
        req = await s.read_request(r)
        body = req.split(b"\r\n\r\n", 1)[1]
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    _, pool = await serve(handler)

    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"%04d," % i

    resp = await pool.request(
        "POST", "/mcp", [("Host", "x")], body().__aiter__(), content_length=None, headers_timeout=2
    )
    assert await resp.read() == b"".join(b"%04d," % i for i in range(50))
    resp.release()


async def test_slow_consumer_pauses_reading_instead_of_buffering_everything(serve) -> None:
    total = 8 * READ_HIGH_WATER

    async def handler(r, w, s):
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // 65536):
            w.write(b"x" * 65536)
            await w.drain()

    _, pool = await serve(handler)
    resp = await pool.request("GET", "/big", [("Host", "x")], None, content_length=None, headers_timeout=2)
    await asyncio.sleep(0.5)  # the backend writes as fast as it can; we read nothing
    assert resp._x.buffered <= READ_HIGH_WATER + 65536 * 2  # bounded by the high-water mark, not the body
    assert len(await resp.read()) == total
    resp.release()


async def test_headers_timeout_raises_and_closes(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        await asyncio.sleep(5)

    _, pool = await serve(handler)
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/mcp", [("Host", "x")], None, content_length=None, headers_timeout=0.3)


async def test_garbage_is_a_protocol_error(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        w.write(b"SSH-2.0-OpenSSH\r\n\r\n")

    _, pool = await serve(handler)
    with pytest.raises(BackendProtocolError):
        await get(pool)


async def test_a_close_delimited_response_ends_cleanly_at_the_close(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await w.drain()
        w.write(b"part two")
        await w.drain()
        w.close()

    _, pool = await serve(handler)
    assert await get(pool) == (200, b"part one, part two")


async def test_a_head_response_lets_its_connection_be_reused(serve) -> None:
    async def handler(r, w, s):
        while True:
            req = await s.read_request(r)
            if req.startswith(b"HEAD"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            else:
                w.write(OK)

    server, pool = await serve(handler)
    assert await get(pool, "HEAD") == (200, b"")
    assert await get(pool) == (200, b"ok")
    assert await get(pool, "HEAD") == (200, b"")
    assert server.connections == 1


async def test_the_headers_timeout_starts_after_the_upload(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        w.write(OK)

    _, pool = await serve(handler)

    async def slow_body() -> AsyncIterator[bytes]:
        for _ in range(4):
            await asyncio.sleep(0.15)  # 0.6 s of upload against a 0.3 s headers timeout
            yield b"x" * 10

    resp = await pool.request(
        "POST", "/mcp", [("Host", "x")], slow_body().__aiter__(), content_length=40, headers_timeout=0.3
    )
    assert (resp.status, await resp.read()) == (200, b"ok")
    resp.release()


async def test_a_body_longer_or_shorter_than_declared_is_never_sent_on(serve) -> None:
    async def handler(r, w, s):
        while True:
            await s.read_request(r)
            w.write(OK)

    _, pool = await serve(handler)
    for parts, declared in (([b"12345", b"678"], 5), ([b"123"], 5)):

        async def body(parts: list[bytes] = parts) -> AsyncIterator[bytes]:
            for p in parts:
                yield p

        with pytest.raises(BackendRequestMismatch):
            await pool.request(
                "POST", "/mcp", [("Host", "x")], body().__aiter__(), content_length=declared, headers_timeout=2
            )
    assert pool.open_connections == 0  # closed, never pooled


async def test_connections_are_capped_and_waiters_served_in_turn(serve) -> None:
    release = asyncio.Event()

    async def handler(r, w, s):
        while True:
            await s.read_request(r)
            await release.wait()
            w.write(OK)
            await w.drain()

    server, _ = await serve(handler)
    metrics = Metrics()
    pool = BackendPool("127.0.0.1", server.port, connect_timeout=2, max_connections=2, metrics=metrics)
    try:
        tasks = [asyncio.create_task(get(pool)) for _ in range(5)]
        for _ in range(200):
            if metrics.registry.get_sample_value("mcp_sidecar_backend_connections", {"state": "waiting"}) == 3:
                break
            await asyncio.sleep(0.01)
        assert metrics.registry.get_sample_value("mcp_sidecar_backend_connections", {"state": "waiting"}) == 3
        assert metrics.registry.get_sample_value("mcp_sidecar_backend_connections", {"state": "open"}) == 2
        release.set()
        assert await asyncio.gather(*tasks) == [(200, b"ok")] * 5
        assert server.connections == 2
        assert metrics.registry.get_sample_value("mcp_sidecar_backend_connections", {"state": "waiting"}) == 0
    finally:
        await pool.close()


async def test_a_full_pool_answers_in_bounded_time(serve) -> None:
    async def handler(r, w, s):
        await s.read_request(r)
        await asyncio.sleep(5)

    server, _ = await serve(handler)
    pool = BackendPool("127.0.0.1", server.port, connect_timeout=0.3, max_connections=1)
    try:
        first = asyncio.create_task(get(pool))
        await asyncio.sleep(0.05)
        with pytest.raises(BackendPoolExhausted):
            await get(pool)
        first.cancel()
    finally:
        await pool.close()


async def test_a_backend_that_stops_reading_pauses_the_upload(serve) -> None:
    stalled = asyncio.Event()

    async def handler(r, w, s):
        await r.readuntil(b"\r\n\r\n")
        await stalled.wait()  # reads nothing more: the request body backs up

    _, pool = await serve(handler)
    produced = 0
    total = 64 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < total:
            produced += 65536
            yield b"x" * 65536

    task = asyncio.create_task(
        pool.request("POST", "/mcp", [("Host", "x")], body().__aiter__(), content_length=total, headers_timeout=5)
    )
    for _ in range(50):  # until the upload stops making progress
        before = produced
        await asyncio.sleep(0.02)
        if produced == before:
            break
    assert produced < total // 4  # bounded by socket buffers and the write high-water mark, not the body
    task.cancel()
    stalled.set()
    with pytest.raises(asyncio.CancelledError):
        await task
