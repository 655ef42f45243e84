"""One keep-alive connection to the backend: an asyncio protocol that parses responses with httptools (llhttp).

It knows when a response is expected (from the moment a request is written until its final response ended)
and treats every byte outside that window as unsolicited: the connection is closed and the pool counts it,
since a second response or idle bytes would otherwise be read as the answer to the next request (desync).
A response without Content-Length or chunked coding ends at the close (RFC 9112 §6.3); interim 1xx
responses are skipped (RFC 9110 §15.2); a HEAD response ends at its head (RFC 9110 §9.3.2); trailer fields
are never merged into the head. Reading pauses above :data:`READ_HIGH_WATER` bytes waiting for the consumer.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol, cast

import httptools

from sidecar.http1 import BackendDisconnected, BackendProtocolError

# Reading pauses when this much response body waits for a slow client; it resumes when the client has taken
# what was buffered (the consumer always takes all of it at once, so there is no separate low mark).
READ_HIGH_WATER = 256 * 1024


class PoolHooks(Protocol):
    """What a connection tells its pool."""

    def forget(self, exchange: Exchange) -> None: ...

    def count_unsolicited(self) -> None: ...

    def put_back(self, exchange: Exchange) -> None: ...


class _Unsolicited(Exception):
    """Raised from a parser callback to stop parsing bytes that no request asked for."""


class Exchange(asyncio.Protocol):
    """One connection. Parses responses with httptools and hands headers and body chunks to the caller.

    ``pool`` is the owning :class:`sidecar.backend.BackendPool`."""

    def __init__(self, pool: PoolHooks) -> None:
        self.pool = pool
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
        self.pool.forget(self)
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
            self.pool.count_unsolicited()
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
        self.pool.forget(self)
