"""The connection pool to the one MCP server behind the sidecar: a lean HTTP/1.1 client (RFC 9112).

Why not aiohttp's ``ClientSession`` here: it is built for talking to the whole web (cookies, redirects,
proxies, tracing, URL re-parsing, auto headers), and on the relay's hot path that machinery was the largest
single cost per request. The sidecar talks to exactly one origin, over loopback, with headers it has already
filtered; this module does only that. Response parsing is ``httptools`` (llhttp, the parser Node.js and
uvicorn use), never hand-written.

What it guarantees (each one is an attack test in ``tests/security/``):
* **framing is data, decided once** (RFC 9112 §6): the caller's body becomes a :class:`Length` or
  :data:`CHUNKED` value before anything is serialized, the head serializer writes exactly that framing and
  never inspects bytes, and the bytes actually sent must equal a declared length, else the connection is
  closed (:class:`BackendRequestMismatch`, a 502), never returned to the pool;
* header bytes pass unchanged: names and values are encoded back to the exact bytes the client sent
  (aiohttp decodes them as UTF-8 with ``surrogateescape``); a name that is not an RFC 9110 token or a value
  with CR, LF or NUL is refused (:class:`UnrepresentableHeader`, a 400) and never sent;
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
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import httptools

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

# Idle keep-alive connections are dropped after this: below uvicorn's 5 s default, so the pool does not
# reuse a connection the backend is closing at the same moment.
KEEPALIVE_SECONDS = 4.0
# At most this many idle connections are kept (the open total is capped by ``max_connections``).
MAX_IDLE_CONNECTIONS = 256
# Reading pauses when this much response body waits for a slow client; it resumes when the client has taken
# what was buffered (the consumer always takes all of it at once, so there is no separate low mark).
READ_HIGH_WATER = 256 * 1024
# Request bodies up to this size are sent in the same write as the head.
COALESCE_BODY_BYTES = 64 * 1024
# RFC 9110 §9.2.2: methods whose repetition has the same effect as one request; only these are retried
# after their bytes went out (RFC 9112 §9.3.1).
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# RFC 9110 §5.1 / §5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Length:
    """The body is exactly ``n`` bytes, declared with ``Content-Length``."""

    n: int


@dataclass(frozen=True, slots=True)
class Chunked:
    """The body's length is unknown: ``Transfer-Encoding: chunked`` (RFC 9112 §7.1)."""


CHUNKED: Final = Chunked()
Framing = Length | Chunked | None  # None: a request without a body and without a framing header


class BackendError(Exception):
    """Base of the errors this module raises; :mod:`sidecar.proxy` maps them to 502/504."""


class BackendConnectError(BackendError):
    """The connection could not be made (refused, unreachable)."""


class BackendConnectTimeout(BackendError):
    """The connection was not accepted within the connect timeout."""


class BackendPoolExhausted(BackendError):
    """Every allowed connection stayed busy for the whole connect timeout."""


class BackendDisconnected(BackendError):
    """The backend closed the connection before the response was complete."""


class BackendProtocolError(BackendError):
    """The backend sent something that is not HTTP/1.1, or a header that cannot be relayed unchanged."""


class BackendRequestMismatch(BackendError):
    """The request body did not have the length its framing declared; the connection was closed."""


class UnrepresentableHeader(ValueError):
    """A header cannot be sent as it is (not a token name, or CR/LF/NUL in the value): a client error."""


class _Exchange(asyncio.Protocol):
    """One connection. Parses responses with httptools and hands headers and body chunks to the caller."""

    def __init__(self, pool: BackendPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parser_dirty = False
        self._reset()
        self.idle_since = 0.0
        self.reused = False
        self._closed = False
        self._counted = True  # counted in the pool's open connections until connection_lost
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # True from the moment a request is written until its final response ended: bytes outside this
        # window were not asked for.
        self.expecting = False
        self.extra = False

    def _reset(self) -> None:
        if self._parser_dirty:
            # After a HEAD response llhttp may still wait for the body its Content-Length announced.
            self._parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
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
        if not self.expecting:
            self._unsolicited()
            return
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
        if self.headers_done.done() and not self.complete and self.error is None and self._close_delimited():
            # RFC 9112 §6.3 rule 8: a response without Content-Length or chunked coding ends when the
            # connection closes; that close is its end, not a failure.
            self.complete = True
            self.expecting = False
            self._wake()
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

    def on_message_begin(self) -> None:
        if not self.expecting:
            # A second response after the final one, in the same segment: stop parsing here, so none of it
            # can touch the response already received.
            self._unsolicited()
            raise _Unsolicited

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a chunked body's trailer fields (RFC 9112 §7.1.2): never part of the relayed head
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
            # RFC 9110 §9.3.2: a response to HEAD has no body whatever its Content-Length says. llhttp cannot
            # be told so per message, so the exchange ends here and the next one starts a fresh parser.
            self._parser_dirty = True
            self._end()

    def on_body(self, body: bytes) -> None:
        if self.head_only or self.complete:
            self._unsolicited()  # bytes after a HEAD response's head
            raise _Unsolicited
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done.done():  # an interim response ended
            return
        if not self.complete:
            self._end()

    # --- the caller's side ---

    def _end(self) -> None:
        self.complete = True
        self.expecting = False
        self._wake()

    def _close_delimited(self) -> bool:
        if self.head_only or self.status in (204, 304):
            return False
        for name, _ in self.raw_headers:
            lname = name.lower()
            if lname == b"content-length" or lname == b"transfer-encoding":
                return False
        return True

    def _unsolicited(self) -> None:
        """Bytes no request asked for: the connection can never be trusted again (response desync)."""
        if not self.extra:
            self.extra = True
            self._pool.count_unsolicited()
        self.keep_alive = False
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._chunk_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def headers_overdue(self, timeout: float) -> None:
        """Timer callback: the response headers did not arrive in time."""
        if not self.headers_done.done():
            self._fail(TimeoutError(f"no response headers within {timeout:g} s"))

    def _fail(self, exc: BaseException) -> None:
        if self.complete:
            # The response already ended; what broke came after it: bytes nobody asked for, or a close.
            if isinstance(exc, BackendProtocolError):
                self._unsolicited()
            self._abort()
            return
        if self.error is None:
            self.error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # retrieved: no "never retrieved" warning when nobody waits
        self._wake()
        self._abort()

    def _abort(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self._closed:
            self._closed = True
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
                if self._reading_paused and self.transport is not None and not self._closed:
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
        return (
            self.complete
            and self.keep_alive
            and not self.extra
            and not self._closed
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self._abort()
        self._pool.forget(self)


class BackendResponse:
    """Status, headers and a body to read whole or stream. Always end with :meth:`release` or :meth:`close`."""

    __slots__ = ("_done", "_x", "headers", "reason", "status")

    def __init__(self, exchange: _Exchange) -> None:
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


def framing_of(method: str, body: Body, content_length: int | None) -> Framing:
    """The framing of a request body, decided once from typed facts, never from serialized bytes."""
    if isinstance(body, bytes):
        return Length(len(body))
    if body is not None:
        return Length(content_length) if content_length is not None else CHUNKED
    if method in ("POST", "PUT", "PATCH"):
        return Length(0)  # RFC 9110 §8.6: a user agent SHOULD send Content-Length: 0 for an empty body
    return None


class _Unsolicited(Exception):
    """Raised from a parser callback to stop parsing bytes that no request asked for."""


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
        self._idle: collections.deque[_Exchange] = collections.deque()
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

    def forget(self, exchange: _Exchange) -> None:
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

    def put_back(self, exchange: _Exchange) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE_CONNECTIONS:
            exchange.close()
            return
        exchange.idle_since = time.monotonic()
        exchange.reused = True
        self._idle.append(exchange)
        self._wake_waiter()

    async def _connect(self) -> _Exchange:
        loop = asyncio.get_running_loop()
        self._open += 1  # the slot is taken while connecting
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

    def _take_idle(self) -> _Exchange | None:
        now = time.monotonic()
        while self._idle:
            exchange = self._idle.pop()  # most recently used first: the warmest connection
            if now - exchange.idle_since < KEEPALIVE_SECONDS and exchange.reusable():
                return exchange
            exchange.close()
        return None

    async def _acquire(self) -> _Exchange:
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

    async def _acquire_fresh(self) -> _Exchange:
        if self._open < self._max:
            return await self._connect()
        return await self._acquire()

    async def _exchange(
        self, x: _Exchange, method: str, head: bytes, body: Body, framing: Framing, headers_timeout: float
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
                await _upload(x, transport, body, framing)
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


async def _upload(x: _Exchange, transport: asyncio.Transport, body: AsyncIterator[bytes], framing: Framing) -> None:
    """Stream a body in its declared framing; a body longer or shorter than its declared length is refused."""
    if isinstance(framing, Length):
        left = framing.n
        async for part in body:
            if not part:
                continue
            if len(part) > left:
                raise BackendRequestMismatch(f"the request body is longer than its declared {framing.n} bytes")
            left -= len(part)
            transport.write(part)
            await x.drain()
        if left:
            raise BackendRequestMismatch(f"the request body ended {left} bytes short of its declared length")
        return
    async for part in body:
        if part:
            transport.write(b"%x\r\n%b\r\n" % (len(part), part))
            await x.drain()
    transport.write(b"0\r\n\r\n")


def serialize_head(method: str, target: str, headers: Iterable[tuple[str, str]], framing: Framing) -> bytes:
    """The request head for this framing. Header text is encoded back to the bytes it was decoded from.

    RFC 9110 §5.5: "Field values containing CR, LF, or NUL characters are invalid and dangerous"; such a value,
    or a name that is not a token, is refused here, whatever its origin."""
    lines = [f"{method} {target} HTTP/1.1"]
    names: list[str] = []
    values: list[str] = []
    for name, value in headers:
        names.append(name)
        values.append(value)
        lines.append(f"{name}: {value}")
    if isinstance(framing, Length):
        lines.append(f"Content-Length: {framing.n}")
    elif framing is not None:
        lines.append("Transfer-Encoding: chunked")
    probe = "\x7f".join(values)
    if "\r" in probe or "\n" in probe or "\x00" in probe or (names and not _TOKEN.fullmatch("".join(names))):
        raise UnrepresentableHeader("a header name is not a token or a header value contains CR, LF or NUL")
    if " " in target or "\r" in target or "\n" in target:
        raise UnrepresentableHeader("the request target contains whitespace")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnrepresentableHeader("a header contains text that has no byte form") from None
