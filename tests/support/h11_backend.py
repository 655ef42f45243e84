"""A backend whose request parser is h11, the reference HTTP/1.1 implementation, answering with raw bytes.

Every request the sidecar sends is parsed by h11 exactly as a strict server would: what lands in
:attr:`H11Backend.requests` is what a real MCP server would have executed, one entry per request, with the
header bytes as they came off the wire. A framing error is recorded in :attr:`H11Backend.errors` (and the
connection closed), so a test can assert that nothing ill-framed ever reached the backend.

Answers are raw bytes chosen per request by :attr:`H11Backend.respond` (``(got, index) -> bytes | None``;
``None`` closes the connection without answering), so tests can send what no well-behaved server sends:
two responses to one request, bytes on an idle connection, a response cut off mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11


@dataclass
class Got:
    """One request as h11 parsed it on the backend side."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names as sent (case kept), values as sent
    body: bytes = b""
    connection: int = 0

    def get(self, name: str) -> bytes | None:
        lname = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def getall(self, name: str) -> list[bytes]:
        lname = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == lname]


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


Respond = Callable[[Got, int], Awaitable[bytes | None]]


async def _echo(got: Got, index: int) -> bytes | None:
    return ok(b"%s %s #%d" % (got.method, got.target, index))


@dataclass
class H11Backend:
    respond: Respond = _echo
    requests: list[Got] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    close_after_answer: bool = False  # close the connection after each answer (close-delimited, truncated)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.writers.append(writer)
        conn = h11.Connection(h11.SERVER)
        got: Got | None = None
        try:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    self.errors.append(f"connection {number}: {exc}")
                    return
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data and conn.their_state is h11.IDLE and got is None:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    got = Got(event.method, event.target, list(event.headers.raw_items()), connection=number)
                elif isinstance(event, h11.Data):
                    assert got is not None
                    got.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert got is not None
                    self.requests.append(got)
                    self.arrived.set()
                    answer = await self.respond(got, len(self.requests) - 1)
                    got = None
                    if answer is None:
                        return
                    writer.write(answer)
                    await writer.drain()
                    if self.close_after_answer:
                        return
                    # The answer went out as raw bytes, so h11's own state machine never saw it: the next
                    # request starts on a fresh h11 connection fed with whatever already arrived.
                    leftover, closed = conn.trailing_data
                    conn = h11.Connection(h11.SERVER)
                    if leftover:
                        conn.receive_data(leftover)
                    if closed:
                        conn.receive_data(b"")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
