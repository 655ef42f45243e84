"""The Python floor: a bare streaming aiohttp reverse proxy, no auth, written the obvious way.

One shared ClientSession, uvloop, bodies streamed both ways, hop-by-hop headers dropped, Host rewritten
to the backend's (aiohttp sets it from the URL). Any proxy written in Python should cost less than this.

    python -m bench.bare_proxy --port 8002 --upstream http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

from bench.backend import new_loop

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host"}
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def relay(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = request.content if request.body_exists else None
    async with request.app[SESSION].request(
        request.method, request.app[UPSTREAM] + request.path_qs, headers=headers, data=body,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def open_session(app: web.Application) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                         connector=aiohttp.TCPConnector(limit=0))


async def close_session(app: web.Application) -> None:
    await app[SESSION].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="backend base URL, e.g. http://127.0.0.1:8001")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", relay)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=new_loop())


if __name__ == "__main__":
    main()
