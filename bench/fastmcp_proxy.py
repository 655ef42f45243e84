"""The Python peer: FastMCP's proxy with JWT verification in front of an MCP server.

Runs in its own venv (``bench/.venv-fastmcp``, made by ``bench/tools.py``), never in the project's: FastMCP
pins its own ``mcp`` SDK. Standalone on purpose (imports nothing from ``bench``).

``create_proxy(client)`` relays every MCP request to the backend through FastMCP's client;
``JWTVerifier(jwks_uri=..., issuer=..., audience=...)`` checks each bearer's RS256 signature against the
benchmark's JWKS service, like the sidecar's gate with ``jwks_url``. Served stateless with JSON responses
(what wrk's lone ``tools/list`` needs; the backend is the same stateless SDK server) by uvicorn with uvloop.

Tuned the way FastMCP allows: by default one backend session, connected at start-up, is shared by every
request (``create_proxy`` with a connected ``Client`` reuses it; FastMCP warns about context mixing, which
a stateless ``tools/list`` does not care about). ``--fresh-sessions`` gives ``create_proxy(<url>)``, the
documented default: a new backend session (``initialize`` handshake included) per request.

    bench/.venv-fastmcp/bin/python bench/fastmcp_proxy.py --port 8010 --upstream http://127.0.0.1:8003 \
        --jwks-url http://127.0.0.1:8004/jwks.json --issuer https://issuer.bench.invalid --audience mcp-bench
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any

import uvicorn
from fastmcp import Client  # type: ignore[import-not-found,unused-ignore]
from fastmcp.server import create_proxy  # type: ignore[import-not-found,unused-ignore]
from fastmcp.server.auth.providers.jwt import JWTVerifier  # type: ignore[import-not-found,unused-ignore]


async def serve(args: argparse.Namespace) -> None:
    verifier = JWTVerifier(jwks_uri=args.jwks_url, issuer=args.issuer, audience=args.audience, algorithm="RS256")
    backend = args.upstream.rstrip("/") + "/mcp"
    async with contextlib.AsyncExitStack() as stack:
        target: Any = backend
        if not args.fresh_sessions:
            target = await stack.enter_async_context(Client(backend))
        proxy = create_proxy(target, name="bench-fastmcp-proxy", auth=verifier)
        app = proxy.http_app(path="/mcp", stateless_http=True, json_response=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
        await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the MCP server (its endpoint is /mcp)")
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--fresh-sessions", action="store_true", help="a new backend session per request")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
