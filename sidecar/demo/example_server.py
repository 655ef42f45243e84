"""An example MCP server built with the official ``mcp`` SDK and nothing else: the sidecar's backend in the
quickstart. It knows nothing about tokens; the sidecar in front of it does all of that.

Run: ``python -m sidecar.demo.example_server --port 8000``
"""

from __future__ import annotations

import argparse
import datetime

import uvicorn
from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("example", instructions="A tiny example server behind mcp-auth-sidecar.")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def utc_now() -> str:
    """The server's current UTC time, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stateful", action="store_true", help="sessions and SSE (default: stateless JSON)")
    args = parser.parse_args()
    app = server.streamable_http_app(
        stateless_http=not args.stateful, json_response=not args.stateful, host=args.host
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
