"""Test backends that stand where the MCP server would, and record what reached them.

* :class:`EchoBackend` answers every method and path; it records method, raw path (byte for byte as it came
  off the wire), the raw header list (repeats and case kept) and the body. By default it answers 200 with a
  JSON echo of the request; ``reply`` replaces that answer for a test, ``delay`` makes it slow (504 tests).
* :class:`SseBackend` answers with ``text/event-stream`` and writes a script of ``(delay, chunk)`` pairs,
  stamping when each chunk was written; it notices when the peer goes away (``closed``) and can keep the
  stream open with ``:`` keep-alives until then (``hold_open``).

Serve either with pytest-aiohttp's ``aiohttp_server(backend.app())``; pass ``handler_cancellation=True`` to
learn of a disconnect at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict


@dataclass
class Seen:
    """One request as the backend received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def get(self, name: str) -> str | None:
        values = self.getall(name)
        return values[0] if values else None

    def getall(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def has(self, name: str) -> bool:
        return bool(self.getall(name))


async def _record(request: web.Request) -> Seen:
    body = await request.read()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    return Seen(request.method, request.raw_path, headers, body)


Reply = Callable[[web.Request, Seen], Awaitable[web.StreamResponse]]


class EchoBackend:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.reply: Reply | None = None
        self.delay: float = 0.0
        self.cancelled = asyncio.Event()  # set when a delayed answer was abandoned by the peer

    @property
    def last(self) -> Seen:
        assert self.seen, "nothing reached the backend"
        return self.seen[-1]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = await _record(request)
        self.seen.append(seen)
        if self.delay:
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if self.reply is not None:
            return await self.reply(request, seen)
        echo = {
            "method": seen.method,
            "raw_path": seen.raw_path,
            "headers": seen.headers,
            "body": seen.body.decode("utf-8", "replace"),
        }
        return web.json_response(echo)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        return app


def fixed(
    status: int,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    content_type: str | None = None,
) -> Reply:
    """A reply with this status, body and (possibly repeated) headers."""

    async def reply(_: web.Request, __: Seen) -> web.StreamResponse:
        hdrs: CIMultiDict[str] = CIMultiDict()
        for name, value in headers:
            hdrs.add(name, value)
        if content_type:
            hdrs["Content-Type"] = content_type
        return web.Response(status=status, body=body or None, headers=hdrs)

    return reply


class SseBackend:
    """An SSE stream written from a script of ``(seconds to wait first, bytes to write)``."""

    def __init__(self, script: Sequence[tuple[float, bytes]], *, hold_open: bool = False) -> None:
        self.script = list(script)
        self.hold_open = hold_open
        self.seen: list[Seen] = []
        self.written_at: list[float] = []
        self.headers_sent_at: float | None = None
        self.closed = asyncio.Event()  # the peer went away (write failed or handler cancelled)
        self.finished = asyncio.Event()  # the script ran to the end and the body was completed

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(await _record(request))
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Mcp-Session-Id": "s-1"},
        )
        try:
            await resp.prepare(request)
            self.headers_sent_at = time.monotonic()
            for delay, chunk in self.script:
                if delay:
                    await asyncio.sleep(delay)
                await resp.write(chunk)
                self.written_at.append(time.monotonic())
            while self.hold_open:
                await asyncio.sleep(0.1)
                await resp.write(b": keep-alive\n\n")
            await resp.write_eof()
            self.finished.set()
        except (asyncio.CancelledError, ConnectionError):
            self.closed.set()
            raise
        return resp

    async def plain(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(await _record(request))
        return web.json_response({"plain": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/plain", self.plain)  # a quick non-streaming answer next to the streams
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        return app


def free_port() -> int:
    """A loopback port nobody listens on right now (for 'backend down' and subprocess servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_json(body: bytes) -> dict[str, object]:
    """The JSON an :class:`EchoBackend` answers with, for assertions on what it saw."""
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


async def serve(app: web.Application, **runner_kwargs: Any) -> TestServer:
    """Start ``app`` on a free loopback port with these AppRunner options (``TestServer(**kw)`` drops them).

    aiohttp's TestServer always runs with ``handler_cancellation=True``, as the sidecar does in production.

    The caller closes it (``await server.close()``), or hands it to ``aiohttp_client`` which does.
    """
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(**runner_kwargs)
    return server
