"""The streaming relay: every request that is not the sidecar's own goes through here (DESIGN §3, §10).

Order per request: Origin check (MCP transport spec, DNS rebinding: servers "MUST validate the Origin header
on all incoming connections") -> bearer check (every method, ``tools/list`` included) -> optional credential
resolution (broker) -> header policy -> backend exchange, streamed both ways.

What the relay never does: parse the JSON-RPC body (a 2026-07-28 server rejects a request whose ``Mcp-Method``
header disagrees with its body, so neither is touched; only a configured tool policy or audit trail reads it,
through :mod:`sidecar.guard`, and still forwards it byte for byte), store cookies, buffer an unsized or large
body, or put a read timeout on a response body (SSE streams may idle for hours between ``:`` keep-alives).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from yarl import URL

from sidecar.auth import Authenticator, Identity
from sidecar.backend import (
    BackendBodyTooLarge,
    BackendConnectError,
    BackendConnectTimeout,
    BackendDisconnected,
    BackendError,
    BackendPool,
    BackendPoolExhausted,
    BackendProtocolError,
    BackendRequestMismatch,
    BackendResponse,
    Body,
    UnrepresentableHeader,
)
from sidecar.challenge import (
    AccessDenied,
    AuthProblem,
    BadGateway,
    BadRequest,
    ForbiddenOrigin,
    GatewayTimeout,
    HTTPProblem,
)
from sidecar.cors import CorsPolicy
from sidecar.guard import Guard, Ticket
from sidecar.headers import RequestHeaderPolicy, response_headers
from sidecar.metrics import Metrics
from sidecar.tool_filter import MAX_FILTERED_BODY_BYTES, FilterError, SseFilter

log = logging.getLogger("sidecar.proxy")

# Bodies up to this size, with a declared length, are read whole and relayed in one write: fewer syscalls
# and no chunked framing for the typical JSON-RPC message. Larger or unsized bodies are streamed.
SMALL_BODY_BYTES = 256 * 1024

Resolver = Callable[[Identity], Awaitable[Mapping[str, str] | None]]
ResourceMetadataFor = Callable[[str], str]


def _translate(exc: BaseException, headers_timeout: float) -> HTTPProblem:
    """Backend failures become the answers MCP clients act on, in this one place."""
    if isinstance(exc, BackendConnectTimeout):
        return GatewayTimeout("the MCP server did not accept the connection in time")
    if isinstance(exc, BackendPoolExhausted):
        return GatewayTimeout("every connection to the MCP server stayed busy (backend_max_connections)")
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"the MCP server did not answer within {headers_timeout:g} s")
    if isinstance(exc, BackendConnectError):
        return BadGateway("the MCP server is not reachable (connection refused or failed)")
    if isinstance(exc, BackendDisconnected):
        return BadGateway("the MCP server closed the connection before answering")
    if isinstance(exc, BackendBodyTooLarge):
        return BadGateway(f"the MCP server's answer is too large to check ({exc})")
    if isinstance(exc, BackendProtocolError):
        return BadGateway(f"the MCP server sent an invalid HTTP response: {exc}")
    if isinstance(exc, BackendRequestMismatch):
        return BadGateway("the request body did not match its declared length; nothing more was sent")
    return BadGateway("the MCP server connection failed")


def _error_kind(problem: HTTPProblem) -> str:
    return "timeout" if isinstance(problem, GatewayTimeout) else "unreachable"


class Proxy:
    """The catch-all handler. Built once; holds only immutable configuration and shared clients."""

    def __init__(
        self,
        *,
        pool: BackendPool,
        upstream: URL,
        authenticator: Authenticator,
        header_policy: RequestHeaderPolicy,
        cors: CorsPolicy,
        metrics: Metrics,
        resource_metadata_for: ResourceMetadataFor,
        headers_timeout: float,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        guard: Guard | None = None,
    ) -> None:
        self._pool = pool
        self._base_path = upstream.raw_path.rstrip("/")
        self._auth = authenticator
        self._headers = header_policy
        self._cors = cors
        self._metrics = metrics
        self._rm_for = resource_metadata_for
        self._headers_timeout = headers_timeout
        self._resolver = resolver
        self._clock = clock
        self._guard = guard  # issue 15: tool policy and audit; None (nothing parsed) when neither is configured
        # Handler tasks relaying a response body right now, and those told to end it (graceful shutdown).
        self._streams: set[asyncio.Task[object]] = set()
        self._ending: set[asyncio.Task[object]] = set()

    def end_streams(self) -> int:
        """End every open response stream cleanly, with the chunked terminator, so that clients see a complete
        response and resume (SSE: a new GET with ``Last-Event-ID``) on another replica. Called at the end of a
        graceful shutdown; returns how many streams were told to end."""
        for task in self._streams:
            self._ending.add(task)
            task.cancel()
        return len(self._streams)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self._guard is None:
            return await self._handle(request, None)
        ticket = self._guard.start()
        try:
            resp = await self._handle(request, ticket)
            ticket.status = resp.status
            return resp
        finally:
            self._guard.finish(ticket, request, ticket.status or 499)  # 499: gone before any answer

    async def _handle(self, request: web.Request, ticket: Ticket | None) -> web.StreamResponse:
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        cors_headers: Mapping[str, str] | None = None
        try:
            if origin is not None:
                if not self._cors.allowed(origin):
                    raise ForbiddenOrigin("this Origin is not allowed to call the MCP server")
                if self._cors.is_preflight(request):
                    return self._finish(self._cors.preflight(request, origin), started)
                cors_headers = self._cors.actual_headers(origin)
            authorization = request.headers.getall("Authorization", ())
            if len(authorization) > 1:
                # RFC 9110 §11.6.2: Authorization is a singleton field. A backend that reads another copy than
                # the one checked here would act on a bearer the sidecar never checked.
                raise BadRequest("more than one Authorization header")
            identity = await self._auth.authenticate(authorization[0] if authorization else None, self._clock())
            if ticket is not None:
                assert self._guard is not None
                await self._guard.admit(ticket, request, identity)
            inject = await self._resolver(identity) if self._resolver is not None else None
            response = await self._relay(request, inject, cors_headers, started, ticket)
        except AuthProblem as problem:
            self._metrics.count_rejection(problem.reason)
            if ticket is not None:
                ticket.fail(problem)
            resp = problem.response(self._rm_for(request.path))
            if cors_headers:
                resp.headers.update(cors_headers)
            return self._finish(resp, started)
        except HTTPProblem as problem:
            if ticket is not None:
                ticket.fail(problem)
                if isinstance(problem, AccessDenied):
                    self._metrics.count_rejection(problem.reason)
            resp = problem.response(self._rm_for(request.path))
            if cors_headers:
                resp.headers.update(cors_headers)
            return self._finish(resp, started)
        return response

    def _finish(self, resp: web.StreamResponse, started: float) -> web.StreamResponse:
        self._metrics.count_status(resp.status)
        self._metrics.latency.observe(time.perf_counter() - started)
        return resp

    async def _relay(
        self,
        request: web.Request,
        inject: Mapping[str, str] | None,
        cors_headers: Mapping[str, str] | None,
        started: float,
        ticket: Ticket | None = None,
    ) -> web.StreamResponse:
        headers = self._headers.build(request.headers, remote=request.remote, inject=inject)
        if ticket is not None and ticket.filters():
            # hide_denied_tools reads the answer: a compressed one could not be filtered (and would reach the
            # client whole), so the backend is asked for it uncompressed (RFC 9110 §12.5.3).
            for name in [k for k in headers if k.lower().replace("_", "-") == "accept-encoding"]:
                headers.popall(name, None)
            headers["Accept-Encoding"] = "identity"
        data: Body
        length = request.content_length
        if ticket is not None and ticket.body is not None:
            data = ticket.body  # read whole by the guard; sent with its own Content-Length
        elif not request.body_exists:
            data = None
        elif length is not None and length <= SMALL_BODY_BYTES:
            # Arrived whole with the head (the usual case): taken from the buffer without request.read()'s awaits
            # and bytearray copy (the app sets no client_max_size for read() to check).
            content = request.content
            data = content.read_nowait() if content.is_eof() else await request.read()
        else:
            data = request.content.iter_any().__aiter__()
        raw = request.raw_path
        if not raw.startswith("/"):
            # absolute-form (RFC 9112 §3.2.2) or asterisk-form target: the backend gets origin-form, path and
            # query still exactly as sent.
            raw = request.rel_url.raw_path_qs
        try:
            # The path and query reach the backend byte for byte, never re-quoted or normalized.
            backend = await self._pool.request(
                request.method,
                self._base_path + raw,
                headers.items(),
                data,
                content_length=length,
                headers_timeout=self._headers_timeout,
            )
        except UnrepresentableHeader as exc:
            raise BadRequest(f"a request header cannot be relayed: {exc}") from None
        except (BackendError, TimeoutError) as exc:
            problem = _translate(exc, self._headers_timeout)
            self._metrics.backend_errors.labels(_error_kind(problem)).inc()
            log.warning("backend request failed: %s", problem.description, extra={"error": type(exc).__name__})
            raise problem from None
        try:
            return await self._respond(request, backend, cors_headers, started, ticket)
        finally:
            # A body we did not finish (client gone, handler cancelled) must close the backend connection,
            # so the backend sees the cancellation; a finished one goes back to the keep-alive pool.
            if backend.at_eof:
                backend.release()
            else:
                backend.close()

    async def _respond(
        self,
        request: web.Request,
        backend: BackendResponse,
        cors_headers: Mapping[str, str] | None,
        started: float,
        ticket: Ticket | None = None,
    ) -> web.StreamResponse:
        headers = response_headers(backend.headers, cors_headers)
        length = backend.content_length
        status = backend.status
        sse = None
        whole = False
        if ticket is not None and ticket.filters():
            # hide_denied_tools: JSON answers are read whole and filtered; SSE is filtered event by event.
            if headers.get("Content-Encoding", "identity").strip().lower() != "identity":
                # Asked for identity and sent something else: its tools cannot be read, so it is not passed on.
                self._metrics.backend_errors.labels("unfilterable").inc()
                raise BadGateway("the MCP server compressed a tools/list answer the sidecar must filter")
            sse = ticket.stream_filter(headers.get("Content-Type", ""))
            whole = sse is None
            headers.popall("Content-Length", None)
        if (
            whole
            or request.method == "HEAD"
            or status in (204, 304)
            or (length is not None and length <= SMALL_BODY_BYTES)
        ):
            try:
                # A body read whole only to be filtered is capped: the backend cannot make the sidecar hold more.
                limit = MAX_FILTERED_BODY_BYTES if whole else None
                body = await backend.read(limit) if request.method != "HEAD" else b""
            except BackendError as exc:
                problem = _translate(exc, self._headers_timeout)
                self._metrics.backend_errors.labels("broken_body").inc()
                raise problem from None
            if ticket is not None:
                try:
                    body = ticket.filter_body(body)
                except FilterError as exc:
                    self._metrics.backend_errors.labels("unfilterable").inc()
                    raise BadGateway(f"the MCP server's answer cannot be checked: {exc}") from None
            resp = _Relayed(status=status, reason=backend.reason, headers=headers)
            resp.untyped = "Content-Type" not in headers
            if body:
                resp.body = body
            return self._finish(resp, started)

        out = _RelayedStream(status=status, reason=backend.reason, headers=headers)
        out.untyped = "Content-Type" not in headers
        if length is not None and sse is None:
            out.content_length = length
        if backend.body_buffered:
            # The first body bytes are already here: the head goes out with them in one write (one segment
            # for the client to wait for). Otherwise the head goes at once, so an SSE client sees it early.
            out.coalesce_head()
        await out.prepare(request)
        if ticket is not None:
            ticket.status = status  # sent: a client leaving mid-stream does not change it
        self._finish(out, started)
        self._metrics.open_streams.inc()
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            if ticket is None:
                async for chunk in backend.iter_chunks():
                    await out.write(chunk)
            else:
                await self._write_counted(out, backend, ticket, sse)
        except asyncio.CancelledError:
            # Only a stream ended by end_streams() finishes normally; a sized body cut short would be a lie.
            if task is None or task not in self._ending or length is not None:
                raise
            task.uncancel()
        except BackendError as exc:
            # Headers are gone already: the only honest signal left is a truncated stream.
            self._metrics.backend_errors.labels("broken_stream").inc()
            log.warning("backend stream broke", extra={"error": type(exc).__name__})
            if request.transport is not None:
                request.transport.close()
            return out
        except ConnectionResetError:
            return out  # the client went away; the finally in _relay closes the backend side
        finally:
            self._metrics.open_streams.dec()
            if task is not None:
                self._streams.discard(task)
                self._ending.discard(task)
        await out.write_eof()
        return out

    @staticmethod
    async def _write_counted(
        out: web.StreamResponse, backend: BackendResponse, ticket: Ticket, sse: SseFilter | None
    ) -> None:
        try:
            async for chunk in backend.iter_chunks():
                if sse is not None:
                    chunk = sse.feed(chunk)
                ticket.response_bytes += len(chunk)
                if chunk:
                    await out.write(chunk)
            if sse is not None:
                tail = sse.finish()
                ticket.response_bytes += len(tail)
                if tail:
                    await out.write(tail)
        except FilterError as exc:
            raise BackendProtocolError(str(exc)) from None

class _Relayed(web.Response):
    """A relayed answer. aiohttp adds ``Content-Type: application/octet-stream`` to a body without one; the
    backend's headers are relayed as they are, so when the backend sent none, that default is taken out."""

    untyped = False

    async def _write_headers(self) -> None:
        if self.untyped:
            self._headers.popall("Content-Type", None)
        await super()._write_headers()


class _RelayedStream(web.StreamResponse):
    """The streamed counterpart of :class:`_Relayed` (both override aiohttp's private ``_write_headers``)."""

    untyped = False

    def coalesce_head(self) -> None:
        self._send_headers_immediately = False

    async def _write_headers(self) -> None:
        if self.untyped:
            self._headers.popall("Content-Type", None)
        await super()._write_headers()
