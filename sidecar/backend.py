"""The connection pool to the one MCP server behind the sidecar: a lean HTTP/1.1 client (RFC 9112).

Why not aiohttp's ``ClientSession`` here: it is built for talking to the whole web (cookies, redirects,
proxies, tracing, URL re-parsing, auto headers), and on the relay's hot path that machinery was the largest
single cost per request. The sidecar talks to exactly one origin, over loopback, with headers it has already
filtered; this module does only that. Response parsing is ``httptools`` (llhttp, the parser Node.js and
uvicorn use), never hand-written. Framing and the request head live in :mod:`sidecar.http1`, one
connection's protocol (response parsing, unsolicited bytes, read backpressure) in :mod:`sidecar.connection`.

What it guarantees (each one is an attack test in ``tests/security/``):
* **framing is data, decided once** (RFC 9112 §6): the caller's body becomes a :class:`Length` or
  :data:`CHUNKED` value before anything is serialized, the head serializer writes exactly that framing and
  never inspects bytes, and the bytes actually sent must equal a declared length, else the connection is
  closed (:class:`BackendRequestMismatch`, a 502), never returned to the pool;
* header bytes pass unchanged: names and values are encoded back to the exact bytes the client sent
  (aiohttp decodes them as UTF-8 with ``surrogateescape``); a value with CR, LF or NUL, or text with no byte
  form, is refused (:class:`UnrepresentableHeader`, a 400) and never sent (names are tokens by construction);
* a connection returns to the pool only after a complete response with nothing extra and keep-alive on both
  sides; any byte that arrives with no request outstanding closes it and is counted
  (``mcp_sidecar_backend_errors_total{kind="unsolicited"}``);
* a request is retried (once, on a fresh connection) only when it is safe (RFC 9112 §9.3.1, RFC 9110
  §9.2.2): no byte of it was written, or the method is idempotent and its body can be replayed;
* the headers timeout runs from the end of the upload to the response head; bodies have no timeout;
  a response delimited by the connection closing (no length, not chunked) ends cleanly at that close;
* response body chunks are handed over as they arrive (SSE) with read backpressure: reading pauses while
  more than :data:`READ_HIGH_WATER` bytes wait for a slow consumer and resumes once it took them;
* at most ``max_connections`` connections are open; further requests wait for one (up to the connect
  timeout), shown by ``mcp_sidecar_backend_connections{state="open"|"waiting"}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Final

from sidecar.connection import READ_HIGH_WATER, Exchange
from sidecar.http1 import (
    CHUNKED,
    BackendBodyTooLarge,
    BackendConnectError,
    BackendConnectTimeout,
    BackendDisconnected,
    BackendError,
    BackendPoolExhausted,
    BackendProtocolError,
    BackendRequestMismatch,
    Body,
    Chunked,
    Framing,
    Length,
    UnrepresentableHeader,
    framing_of,
    serialize_head,
    upload,
)

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

__all__ = [
    "CHUNKED",
    "COALESCE_BODY_BYTES",
    "IDEMPOTENT_METHODS",
    "READ_HIGH_WATER",
    "BackendBodyTooLarge",
    "BackendConnectError",
    "BackendConnectTimeout",
    "BackendDisconnected",
    "BackendError",
    "BackendPool",
    "BackendPoolExhausted",
    "BackendProtocolError",
    "BackendRequestMismatch",
    "BackendResponse",
    "Body",
    "Chunked",
    "Framing",
    "Length",
    "UnrepresentableHeader",
    "framing_of",
    "serialize_head",
]

# Idle keep-alive connections are dropped after this: below uvicorn's 5 s default, so the pool does not
# reuse a connection the backend is closing at the same moment.
KEEPALIVE_SECONDS = 4.0
# At most this many idle connections are kept (the open total is capped by ``max_connections``).
MAX_IDLE_CONNECTIONS = 256
# Request bodies up to this size are sent in the same write as the head.
COALESCE_BODY_BYTES = 64 * 1024
# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request; only these are retried
# after their bytes went out (RFC 9112 §9.3.1).
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class BackendResponse:
    """Status, headers and a body to read whole or stream. Always end with :meth:`release` or :meth:`close`."""

    __slots__ = ("_done", "_x", "headers", "reason", "status")

    def __init__(self, exchange: Exchange) -> None:
        self._x = exchange
        self._done = False
        self.status = exchange.status
        self.reason = exchange.reason
        try:
            # Header bytes reach the client as the backend sent them: aiohttp writes header text as UTF-8, so
            # UTF-8 bytes round-trip exactly; anything else could only be altered, so it is refused (502).
            self.headers = [(n.decode(), v.decode()) for n, v in exchange.raw_headers]
        except UnicodeDecodeError:
            raise BackendProtocolError("a response header is not UTF-8 and cannot be relayed unchanged") from None

    @property
    def content_length(self) -> int | None:
        for name, value in self.headers:
            if len(name) == 14 and name.lower() == "content-length":
                return int(value) if value.isdigit() else None
        return None

    @property
    def body_buffered(self) -> bool:
        """Body bytes arrived and wait to be read."""
        return bool(self._x.chunks)

    @property
    def at_eof(self) -> bool:
        return self._x.complete and not self._x.chunks

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; more than ``limit`` bytes raise :class:`BackendBodyTooLarge` (nothing more is read)."""
        parts: list[bytes] = []
        total = 0
        while (chunk := await self._x.next_chunk()) is not None:
            total += len(chunk)
            if limit is not None and total > limit:
                raise BackendBodyTooLarge(f"the response body is larger than {limit} bytes")
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
            self._x.pool.put_back(self._x)
        else:
            self._x.close()

    def close(self) -> None:
        """Abandon it: the connection is closed, so the backend sees the exchange end (cancellation)."""
        if not self._done:
            self._done = True
            self._x.close()


class _NotSent(Exception):
    """The connection was gone before any byte of the request was written: always safe to retry."""


class BackendPool:
    """Keep-alive connections to one backend ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 100,
        metrics: Metrics | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._idle: collections.deque[Exchange] = collections.deque()
        self._closed = False
        self._max = max_connections
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._metrics = metrics
        if metrics is not None:
            self._gauge_open = metrics.backend_connections.labels("open")
            self._gauge_waiting = metrics.backend_connections.labels("waiting")
            self._unsolicited = metrics.backend_errors.labels("unsolicited")

    @property
    def open_connections(self) -> int:
        return self._open

    def count_unsolicited(self) -> None:
        if self._metrics is not None:
            self._unsolicited.inc()

    def forget(self, exchange: Exchange) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(exchange)
        if exchange._counted and exchange._closed:
            exchange._counted = False
            self._open -= 1
            if self._metrics is not None:
                self._gauge_open.set(self._open)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def put_back(self, exchange: Exchange) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            exchange.close()
            return
        exchange.idle_since = time.monotonic()
        exchange.reused = True
        self._idle.append(exchange)
        self._wake_waiter()

    async def _connect(self) -> Exchange:
        loop = asyncio.get_running_loop()
        self._open += 1  # the slot is taken while connecting
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: Exchange(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except TimeoutError:
            self._release_slot()
            raise BackendConnectTimeout(f"no connection within {self._connect_timeout:g} s") from None
        except OSError as exc:
            self._release_slot()
            raise BackendConnectError(exc.strerror or type(exc).__name__) from None
        except BaseException:
            self._release_slot()
            raise
        if self._metrics is not None:
            self._gauge_open.set(self._open)
        return protocol

    def _release_slot(self) -> None:
        self._open -= 1
        self._wake_waiter()

    def _take_idle(self) -> Exchange | None:
        now = time.monotonic()
        while self._idle:
            exchange = self._idle.pop()  # most recently used first: the warmest connection
            if now - exchange.idle_since < KEEPALIVE_SECONDS and exchange.reusable():
                return exchange
            exchange.close()
        return None

    async def _acquire(self) -> Exchange:
        exchange = self._take_idle()
        if exchange is not None:
            return exchange
        if self._open < self._max:
            return await self._connect()
        # Every allowed connection is busy: wait for one to come back or close, up to the connect timeout.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        if self._metrics is not None:
            self._gauge_waiting.inc()
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise BackendPoolExhausted(
                        f"all {self._max} backend connections stayed busy for {self._connect_timeout:g} s"
                    )
                waiter = loop.create_future()
                self._waiters.append(waiter)
                try:
                    async with asyncio.timeout(remaining):
                        await waiter
                except TimeoutError:
                    continue
                finally:
                    if not waiter.done():
                        waiter.cancel()
                exchange = self._take_idle()
                if exchange is not None:
                    return exchange
                if self._open < self._max:
                    return await self._connect()
        finally:
            if self._metrics is not None:
                self._gauge_waiting.dec()

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
        they did not within ``headers_timeout`` seconds of the end of the upload (bodies have no timeout).

        Raises :class:`UnrepresentableHeader` (before anything is sent) for a header that cannot be sent."""
        framing = framing_of(method, body, content_length)
        head = serialize_head(method, target, headers, framing)
        replayable = not isinstance(body, AsyncIterator)
        exchange = await self._acquire()
        try:
            return await self._exchange(exchange, method, head, body, framing, headers_timeout)
        except _NotSent:
            pass
        except BackendDisconnected:
            # RFC 9112 §9.3.1: "A user agent MUST NOT automatically retry a request with a non-idempotent
            # method unless it has some means to know that the request semantics are actually idempotent,
            # regardless of the method, or some means to detect that the original request was never applied."
            # A reused connection that closed before any response byte usually means the backend's idle timer
            # fired as the request went out, but a POST may also have run: only idempotent methods retry.
            if not (exchange.reused and not exchange.got_bytes and replayable and method in IDEMPOTENT_METHODS):
                raise
        fresh = await self._acquire_fresh()
        try:
            return await self._exchange(fresh, method, head, body, framing, headers_timeout)
        except _NotSent:
            raise BackendDisconnected("the backend closed the connection") from None

    async def _acquire_fresh(self) -> Exchange:
        if self._open < self._max:
            return await self._connect()
        return await self._acquire()

    async def _exchange(
        self, x: Exchange, method: str, head: bytes, body: Body, framing: Framing, headers_timeout: float
    ) -> BackendResponse:
        transport = x.transport
        if transport is None or x._closed or transport.is_closing():
            x.close()
            raise _NotSent
        x._reset()
        x.head_only = method == "HEAD"
        x.expecting = True
        timer: asyncio.TimerHandle | None = None
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
                await upload(transport.write, x.drain, body, framing)
            # The backend's time to answer starts when it has the whole request.
            timer = x._loop.call_later(headers_timeout, x.headers_overdue, headers_timeout)
            await x.headers_done
            response = BackendResponse(x)
        except BaseException:
            x.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return response

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
