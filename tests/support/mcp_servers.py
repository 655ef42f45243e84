"""A real, unmodified MCP server (official ``mcp`` SDK 2.x, ``MCPServer``) served by uvicorn for tests.

``running_mcp_server(stateless=..., json_response=...)`` starts the SDK's own Streamable HTTP app on a free
loopback port in a background thread (its own event loop, as ``MCPServer.run(transport="streamable-http")``
would) and yields its base URL; the MCP endpoint is ``<base>/mcp``. The server is bound to 127.0.0.1, so the
SDK's DNS-rebinding protection is on: a foreign ``Host`` or ``Origin`` gets 421/403 from it, which is why the
sidecar must rewrite both.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette

from tests.support.backends import free_port


def make_server(name: str = "sidecar-test-server") -> MCPServer:
    server = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Echo the given text back unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


def make_app(*, stateless: bool, json_response: bool) -> Starlette:
    return make_server().streamable_http_app(stateless_http=stateless, json_response=json_response, host="127.0.0.1")


class UvicornThread:
    """An ASGI app under uvicorn in a daemon thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, app: Starlette, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn exited before it started")
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start in time")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5)


@contextlib.contextmanager
def running_mcp_server(*, stateless: bool = False, json_response: bool = False) -> Iterator[str]:
    """Yield the base URL of a running SDK server (``/mcp`` is its endpoint)."""
    runner = UvicornThread(make_app(stateless=stateless, json_response=json_response))
    runner.start()
    try:
        yield runner.url
    finally:
        runner.stop()
