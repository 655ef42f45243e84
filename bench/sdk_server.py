"""What users actually run: an official ``mcp`` SDK server (2.x), stateless with JSON responses, one tool.

Served by uvicorn the way ``MCPServer.run(transport="streamable-http")`` does (uvicorn's defaults).

    python -m bench.sdk_server --port 8003
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette


def make_app() -> Starlette:
    server = MCPServer("bench-sdk-server")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the given text back unchanged."""
        return text

    return server.streamable_http_app(stateless_http=True, json_response=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(make_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
