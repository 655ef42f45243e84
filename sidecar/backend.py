"""The connection pool to the one MCP server behind the sidecar: a lean HTTP/1.1 client (RFC 9112).

Why not aiohttp's ``ClientSession`` here: it is built for talking to the whole web (cookies, redirects,
proxies, tracing, URL re-parsing, auto headers), and on the relay's hot path that machinery was the largest
single cost per request. The sidecar talks to exactly one origin, over loopback, with headers it has already
filtered; this module does only that. Response parsing is ``httptools`` (llhttp, the parser Node.js and
uvicorn use), never hand-written.

What it guarantees:
* a request is one ``write`` (head and a small body together); larger or unsized bodies stream, chunked
  when their length is unknown (RFC 9112 §7.1), with write backpressure honoured;
* response bodies are delivered chunk by chunk as they arrive (SSE), with read backpressure: when the
  consumer (the client on the other side) is slower than the backend, reading pauses;
* a connection returns to the pool only when its response was read to the end and both sides allow
  keep-alive; anything else closes it, so a cancelled or abandoned exchange is seen by the backend;
* a request that met a kept-alive connection the backend had just closed (no response byte received) is
  sent once more on a fresh connection when its body can be replayed: the backend never saw it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import cast

import httptools

# Idle keep-alive connections are dropped after this: below uvicorn's 5 s default, so the pool does not
# reuse a connection the backend is closing at the same moment.
KEEPALIVE_SECONDS = 4.0
# At most this many idle connections are kept; busy ones are not limited (SSE streams may hold hundreds).
MAX_IDLE_CONNECTIONS = 256
# Reading pauses when this much response body waits for a slow client, and resumes below the low mark.
READ_HIGH_WATER = 256 * 1024
READ_LOW_WATER = 64 * 1024
# Request bodies up to this size are sent in the same write as the head.
COALESCE_BODY_BYTES = 64 * 1024


class BackendError(Exception):
    """Base of the errors this module raises; :mod:`sidecar.proxy` maps them to 502/504."""


class BackendConnectError(BackendError):
    """The connection could not be made (refused, unreachable)."""


class BackendConnectTimeout(BackendError):
    """The connection was not accepted within the connect timeout."""


class BackendDisconnected(BackendError):
    """The backend closed the connection before the response was complete."""


class BackendProtocolError(BackendError):
    """The backend sent something that is not HTTP/1.1."""


class _Exchange(asyncio.Protocol):
    """One connection. Parses responses with httptools and hands headers and body chunks to the caller."""

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset()
        self.idle_since = 0.0
        self.reused = False
        self._closed = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def _reset(self) -> None:
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done: asyncio.Future[None] = self._loop.create_future()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.complete = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self.keep_alive = False
        self._chunk_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.head_only = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BackendProtocolError("the backend switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BackendProtocolError(f"invalid HTTP from the backend ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._pool.forget(self)
        if not self.complete:
            self._fail(BackendDisconnected("the backend closed the connection"))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(self.error or BackendDisconnected("the backend closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- httptools callbacks ---

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        code = self._parser.get_status_code()
        if 100 <= code < 200:
            # RFC 9110 §15.2: interim responses are not the answer; the final one follows on this connection.
            self.raw_headers = []
            self.reason = ""
            return
        self.status = code
        self.keep_alive = bool(self._parser.should_keep_alive())
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head_only:
            # A response to HEAD has no body whatever its Content-Length says; llhttp cannot be told per
            # message, so the exchange ends here and the connection is not reused.
            self.keep_alive = False
            self.complete = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done.done():  # an interim response ended
            return
        self.complete = True
        self._wake()

    # --- the caller's side ---

    def _wake(self) -> None:
        waiter = self._chunk_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def headers_overdue(self, timeout: float) -> None:
        """Timer callback: the response headers did not arrive in time."""
        if not self.headers_done.done():
            self._fail(TimeoutError(f"no response headers within {timeout:g} s"))

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # retrieved: no "never retrieved" warning when nobody waits
        self._wake()
        if self.transport is not None and not self._closed:
            self.transport.abort()

    async def drain(self) -> None:
        if self._write_paused and not self._closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body. Raises if the body broke off."""
        while True:
            if self.chunks:
                # Everything that arrived since the last read goes out as one write (as aiohttp's iter_any
                # does): a burst of small SSE events costs one syscall, not one per TCP segment.
                chunk = self.chunks.popleft() if len(self.chunks) == 1 else b"".join(self.chunks)
                self.chunks.clear()
                self.buffered = 0
                if self._reading_paused and self.buffered < READ_LOW_WATER and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._chunk_waiter = self._loop.create_future()
            await self._chunk_waiter
            self._chunk_waiter = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self._closed and self.transport is not None

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.abort()
        self._pool.forget(self)


class BackendResponse:
    """Status, headers and a body to read whole or stream. Always end with :meth:`release` or :meth:`close`."""

    __slots__ = ("_done", "_x", "headers", "reason", "status")

    def __init__(self, exchange: _Exchange) -> None:
        self._x = exchange
        self._done = False
        self.status = exchange.status
        self.reason = exchange.reason
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in exchange.raw_headers]

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == "content-length":
                return int(value) if value.isdigit() else None
        return None

    @property
    def at_eof(self) -> bool:
        return self._x.complete and not self._x.chunks

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while (chunk := await self._x.next_chunk()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._x.next_chunk()) is not None:
            yield chunk

    def release(self) -> None:
        """Done with it: back to the pool when the body was read to the end, else closed."""
        if self._done:
            return
        self._done = True
        if self._x.reusable() and not self._x.chunks:
            self._x._pool.put_back(self._x)
        else:
            self._x.close()

    def close(self) -> None:
        """Abandon it: the connection is closed, so the backend sees the exchange end (cancellation)."""
        if not self._done:
            self._done = True
            self._x.close()


Body = bytes | AsyncIterator[bytes] | None


class BackendPool:
    """Keep-alive connections to one backend ``host:port``."""

    def __init__(
        self, host: str, port: int, *, connect_timeout: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._idle: collections.deque[_Exchange] = collections.deque()
        self._closed = False

    def forget(self, exchange: _Exchange) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(exchange)

    def put_back(self, exchange: _Exchange) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            exchange.close()
            return
        exchange.idle_since = time.monotonic()
        exchange.reused = True
        self._idle.append(exchange)

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Exchange(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except TimeoutError:
            raise BackendConnectTimeout(f"no connection within {self._connect_timeout:g} s") from None
        except OSError as exc:
            raise BackendConnectError(exc.strerror or type(exc).__name__) from None
        return protocol

    def _take_idle(self) -> _Exchange | None:
        now = time.monotonic()
        while self._idle:
            exchange = self._idle.pop()  # most recently used first: the warmest connection
            if now - exchange.idle_since < KEEPALIVE_SECONDS and exchange.transport is not None and not (
                exchange.transport.is_closing()
            ):
                return exchange
            exchange.close()
        return None

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: Body,
        *,
        content_length: int | None,
        headers_timeout: float,
    ) -> BackendResponse:
        """Send one request; return when the response headers arrived, or raise :class:`TimeoutError` when
        they did not within ``headers_timeout`` seconds of sending (bodies themselves have no timeout)."""
        head = _serialize_head(method, target, headers, body, content_length)
        replayable = not isinstance(body, AsyncIterator)
        exchange = self._take_idle()
        if exchange is None:
            exchange = await self._connect()
        try:
            return await self._exchange(exchange, method, head, body, headers_timeout)
        except BackendDisconnected:
            if not (exchange.reused and not exchange.got_bytes and replayable):
                raise
        # RFC 9112 §9.3.1 allows retrying when the connection closed before any response: the backend had
        # closed this idle connection as the request went out, so it never processed it. Once, fresh.
        return await self._exchange(await self._connect(), method, head, body, headers_timeout)

    async def _exchange(
        self, x: _Exchange, method: str, head: bytes, body: Body, headers_timeout: float
    ) -> BackendResponse:
        x._reset()
        x.head_only = method == "HEAD"
        transport = x.transport
        assert transport is not None
        # One timer handle instead of an asyncio.timeout context per request: cheaper on the hot path.
        timer = x._loop.call_later(headers_timeout, x.headers_overdue, headers_timeout)
        try:
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                if len(body) <= COALESCE_BODY_BYTES:
                    transport.write(head + body)
                else:
                    transport.write(head)
                    transport.write(body)
                    await x.drain()
            else:
                transport.write(head)
                chunked = b"transfer-encoding: chunked" in head.lower()
                async for part in body:
                    if not part:
                        continue
                    if chunked:
                        transport.write(b"%x\r\n%b\r\n" % (len(part), part))
                    else:
                        transport.write(part)
                    await x.drain()
                if chunked:
                    transport.write(b"0\r\n\r\n")
            await x.headers_done
        except BaseException:
            x.close()
            raise
        finally:
            timer.cancel()
        return BackendResponse(x)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _serialize_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: Body, content_length: int | None
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        else:
            lines.append("Transfer-Encoding: chunked")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
