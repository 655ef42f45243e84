"""Process model: one event loop per worker, ``SO_REUSEPORT`` when several share the port, graceful stop.

``workers: 1`` serves the proxy and the metrics port in one process. ``workers: N`` forks N workers that each
bind the port with ``SO_REUSEPORT`` (the kernel spreads connections), while the supervising process serves
the merged metrics of all workers and restarts a worker that dies. A worker dies with its supervisor, even
when the supervisor is killed outright (``PR_SET_PDEATHSIG``): no orphan keeps the port.

Graceful stop, on ``SIGTERM`` (or ``SIGINT``), in this order:

1. ``/readyz`` answers 503 at once, so Kubernetes takes the pod out of the Service's endpoints;
2. requests keep being served for ``shutdown_delay_seconds`` (the endpoint removal travels to every node's
   proxy and to ingress controllers meanwhile; a request that still arrives must not be refused);
3. the listener closes; requests in flight get up to ``shutdown_timeout_seconds`` to finish;
4. response streams still open then (SSE) are ended cleanly, with the chunked terminator, so their clients
   see a complete response and resume elsewhere with ``Last-Event-ID``; what is left after
   ``STREAM_END_GRACE_SECONDS`` more is cancelled.

The chart's ``terminationGracePeriodSeconds`` covers the sum (see ``grace_period_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.process import BaseProcess
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from sidecar import logs
from sidecar.app import build_app
from sidecar.config import Settings, parse_host_port
from sidecar.keys import HEALTH, PROXY
from sidecar.metrics import Metrics, exposition_registry, metrics_app

log = logging.getLogger("sidecar.server")

# Header limits of the HTTP parser. Authorization headers up to 16 KB are read and larger ones answered
# 431 by the bearer check; the parser itself refuses lines beyond these (400) before any handler runs.
MAX_FIELD_BYTES = 64 * 1024
MAX_LINE_BYTES = 16 * 1024
# The client connection's parser options (tests serve with the same). auto_decompress off: aiohttp would
# otherwise inflate a Content-Encoding: gzip/deflate/br request body, so the MCP server got bytes that no longer
# match their headers (and a small bomb as a large upload), and a body that does not inflate was a 500. The
# relay forwards request bodies byte for byte; a tool policy refuses a compressed one (sidecar.guard).
RUNNER_OPTIONS: dict[str, Any] = {
    "max_field_size": MAX_FIELD_BYTES, "max_line_size": MAX_LINE_BYTES, "auto_decompress": False,
}
# After open streams were ended at the end of shutdown_timeout_seconds: time for their last bytes and the
# chunked terminator to reach the client before whatever is still running is cancelled.
STREAM_END_GRACE_SECONDS = 2.0
# A supervisor waits this much longer than its workers' own drain before it kills one that hangs.
SUPERVISOR_MARGIN_SECONDS = 3.0
# prctl(2) option: the signal the kernel sends this process when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
# A worker that dies is restarted, but not faster than this, so a crash loop does not spin the CPU.
WORKER_RESTART_DELAY_SECONDS = 1.0
LISTEN_BACKLOG = 1024


def _install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# The answer to a request head that did not arrive in time (RFC 9110 §15.5.9), then the connection closes.
_HEAD_TIMEOUT_BODY = b'{"error": "request_timeout", "error_description": "the request head did not arrive in time"}'
_HEAD_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY)
)


class HeadTimedRequestHandler(RequestHandler):
    """aiohttp's connection protocol plus the timer it lacks: a request head must be complete within
    ``request_header_timeout_seconds`` of the connection opening or of its first byte (slowloris defence, as
    nginx's ``client_header_timeout``). Costs nothing per request whose head arrives in one segment."""

    head_timeout = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._head_armed_at = self._request_count
        self._head_timer = self._loop.call_later(self.head_timeout, self._head_overdue)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif self._head_timer is None and self._current_request is None and not self._messages:
            self._arm()  # bytes with no request in progress: the start of a new head

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._request_count != self._head_armed_at or self._current_request is not None or self._messages:
            return  # a head completed meanwhile (the bytes were a body): nothing is overdue
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(_HEAD_TIMEOUT_ANSWER)
        self.force_close()
        if transport is not None:
            transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp's parser refused (bad framing, obs-fold, NUL, ...) is answered 400 with a JSON body
        like every other client error, not a text page, and logged at debug level: a client must not be able
        to fill the logs with tracebacks."""
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        reason = (getattr(exc, "message", None) or message or "malformed request").splitlines()[0].strip(" :")
        log.debug("refused a malformed request: %s", reason[:120])
        resp = web.json_response({"error": "invalid_request", "error_description": reason[:120]}, status=status)
        resp.force_close()
        return resp

    def connection_lost(self, exc: BaseException | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)


class _HeadTimedServer(web.Server):
    head_timeout = 10.0

    def __call__(self) -> RequestHandler:
        handler = HeadTimedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.head_timeout = self.head_timeout
        return handler


class SidecarRunner(web.AppRunner):
    """``web.AppRunner`` whose connections time out an incomplete request head."""

    def __init__(self, app: web.Application, *, request_header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout = request_header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _HeadTimedServer  # same state, one overridden method: the protocol factory
        cast(_HeadTimedServer, server).head_timeout = self._head_timeout
        return server


def grace_period_seconds(settings: Settings) -> float:
    """How long a graceful stop of one worker may take at most; Kubernetes' grace period must exceed it."""
    return settings.shutdown_delay_seconds + settings.shutdown_timeout_seconds + STREAM_END_GRACE_SECONDS


def _runner(app: web.Application, settings: Settings) -> web.AppRunner:
    return SidecarRunner(
        app,
        request_header_timeout=settings.request_header_timeout_seconds,
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,  # a client that disconnects cancels the backend call at once
        **RUNNER_OPTIONS,
        # aiohttp waits this long for in-flight handlers once the listener is closed, then cancels them. Streams
        # are ended (cleanly) at shutdown_timeout_seconds, a little before that.
        shutdown_timeout=settings.shutdown_timeout_seconds + STREAM_END_GRACE_SECONDS,
    )


def _metrics_runner(registry: Any, settings: Settings) -> web.AppRunner:
    """The metrics port's runner. It shares the process (and its file descriptors) with the MCP port, so it cuts
    off an unfinished request head the same way (slowloris)."""
    return SidecarRunner(
        metrics_app(exposition_registry(registry)),
        request_header_timeout=settings.request_header_timeout_seconds,
        handle_signals=False,
        access_log=None,
    )


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(settings: Settings, *, with_metrics: bool, reuse_port: bool, worker: int | None = None) -> None:
    metrics = Metrics()
    app = build_app(settings, metrics)
    runner = _runner(app, settings)
    await runner.setup()
    # Everything built so far (modules, settings, the app, compiled policy) lives as long as the process: moved out
    # of the collector's generations, so the collections that request garbage triggers no longer rescan it.
    gc.freeze()
    host, port = parse_host_port(settings.listen)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG)
    await site.start()
    metrics_runner = None
    if with_metrics:
        metrics_runner = _metrics_runner(metrics.registry, settings)
        await metrics_runner.setup()
        mhost, mport = parse_host_port(settings.metrics_listen)
        await web.TCPSite(metrics_runner, mhost, mport).start()
    log.info("listening", extra={"listen": settings.listen, "metrics_listen": settings.metrics_listen,
                                 "worker": worker})
    try:
        await _wait_for_signal()
    finally:
        await _drain(app, runner, settings, worker)
        if metrics_runner is not None:
            await metrics_runner.cleanup()


async def _drain(app: web.Application, runner: web.AppRunner, settings: Settings, worker: int | None) -> None:
    """The graceful stop described in the module docstring."""
    app[HEALTH].ready = False
    log.info("shutting down: unready, still serving", extra={"worker": worker,
                                                              "delay_seconds": settings.shutdown_delay_seconds})
    if settings.shutdown_delay_seconds > 0:
        await asyncio.sleep(settings.shutdown_delay_seconds)
    for site in list(runner.sites):
        await site.stop()  # the listener closes; connections already accepted are served to their end
    log.info("listener closed; waiting for requests in flight",
             extra={"worker": worker, "timeout_seconds": settings.shutdown_timeout_seconds})

    def end_streams() -> None:
        if PROXY in app:
            ended = app[PROXY].end_streams()
            if ended:
                log.info("ended open streams", extra={"worker": worker, "streams": ended})

    loop = asyncio.get_running_loop()
    ending = loop.call_later(settings.shutdown_timeout_seconds, end_streams)
    try:
        await runner.cleanup()
    finally:
        ending.cancel()
    log.info("stopped", extra={"worker": worker})


def _die_with(parent: int) -> bool:
    """Ask the kernel to send SIGTERM when the supervisor dies (even by SIGKILL); False if it is gone already.

    SIGTERM, not SIGKILL: an orphaned worker still drains (its requests finish) before it exits.
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: only the supervisor's own stop applies
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The parent may have died between fork() and prctl(): then the signal will never come.
    return os.getppid() == parent


def _worker_main(settings: Settings, index: int, parent: int) -> None:
    if not _die_with(parent):
        return
    logs.setup(settings.log_format, settings.log_level)
    _install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, with_metrics=False, reuse_port=True, worker=index))


async def _supervise(settings: Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    procs: dict[int, BaseProcess] = {}

    def start(index: int) -> None:
        name = f"mcp-auth-sidecar-worker-{index}"
        proc = ctx.Process(target=_worker_main, args=(settings, index, os.getpid()), name=name)
        proc.start()
        procs[index] = proc

    for i in range(settings.workers):
        start(i)
    metrics_runner = _metrics_runner(Metrics().registry, settings)
    await metrics_runner.setup()
    mhost, mport = parse_host_port(settings.metrics_listen)
    await web.TCPSite(metrics_runner, mhost, mport).start()
    stopping = asyncio.create_task(_wait_for_signal())
    try:
        while not stopping.done():
            await asyncio.wait({stopping}, timeout=WORKER_RESTART_DELAY_SECONDS)
            for index, proc in list(procs.items()):
                if not proc.is_alive() and not stopping.done():
                    log.error("worker died; restarting", extra={"worker": index, "exitcode": proc.exitcode})
                    _mark_dead(proc.pid)
                    start(index)
    finally:
        for proc in procs.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_period_seconds(settings) + SUPERVISOR_MARGIN_SECONDS
        for proc in procs.values():
            # Joined in a thread: the supervisor's metrics port keeps answering while the workers drain.
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker did not stop in time; killing it", extra={"worker": proc.name})
                proc.kill()
            proc.join()
        await metrics_runner.cleanup()


def _mark_dead(pid: int | None) -> None:
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def run(settings: Settings) -> int:
    """Entry point of ``mcp-auth-sidecar serve`` after the configuration was accepted."""
    logs.setup(settings.log_format, settings.log_level)
    uv = _install_uvloop()
    log.info("starting mcp-auth-sidecar", extra={"mode": settings.mode, "workers": settings.workers, "uvloop": uv})
    try:
        if settings.workers == 1:
            asyncio.run(serve(settings, with_metrics=True, reuse_port=False))
        else:
            asyncio.run(_supervise(settings))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
