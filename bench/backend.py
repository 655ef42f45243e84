"""The minimal backend: answers every POST with a fixed ~505 B ``tools/list`` result, and streams SSE.

It isolates the cost of whatever sits in front of it: it does no JSON parsing and no MCP work at all.

    python -m bench.backend --port 8001

``GET /sse?events=1000&size=200&interval_ms=0`` streams ``events`` SSE events of about ``size`` bytes
each (``id:`` and ``data:`` lines), the first one flushed on its own, the rest as fast as the socket
takes them unless ``interval_ms`` spaces them out.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from bench.workload import SSE_PATH, TOOLS_LIST_RESULT


async def tools_list(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=TOOLS_LIST_RESULT, content_type="application/json")


def sse_event(index: int, size: int) -> bytes:
    """One SSE event of ``size`` bytes in total (for sizes above the framing's own ~20 bytes)."""
    head = f"id: {index}\ndata: ".encode()
    padding = max(size - len(head) - 2, 1)
    return head + b"x" * padding + b"\n\n"


async def sse(request: web.Request) -> web.StreamResponse:
    events = int(request.query.get("events", "1000"))
    size = int(request.query.get("size", "200"))
    interval = float(request.query.get("interval_ms", "0")) / 1000.0
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )
    await response.prepare(request)
    for index in range(events):
        await response.write(sse_event(index, size))
        if interval:
            await asyncio.sleep(interval)
    await response.write_eof()
    return response


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get(SSE_PATH, sse)
    app.router.add_post("/{tail:.*}", tools_list)
    return app


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed (it is in the test extra), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=new_loop())


if __name__ == "__main__":
    main()
