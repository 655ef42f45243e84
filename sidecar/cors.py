"""Origin allow-list and CORS for browser-based MCP clients (MCP Streamable HTTP transport, security warning:
servers "MUST validate the Origin header on all incoming connections to prevent DNS rebinding attacks").

A request without ``Origin`` comes from a non-browser client and passes. A request with one must carry the
public URL's own origin or one of ``allowed_origins``; the sidecar answers 403 itself otherwise. A loopback
public URL (``localhost``, ``127.0.0.1``, ``[::1]``) also accepts the other two names with the same scheme and
port: they name one listener on one machine, so no rebinding is possible between them, and the MCP SDK servers
accept them too (the conformance suite's ``dns-rebinding-protection`` scenario checks it). Allowed
origins get CORS (Fetch standard §3.2): an unauthenticated preflight that allows the MCP headers, and
``Access-Control-Allow-Origin`` plus ``Access-Control-Expose-Headers`` on every actual response, 401s included,
so a browser client can read ``WWW-Authenticate`` and ``Mcp-Session-Id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web
from yarl import URL

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
BASE_ALLOWED_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Last-Event-ID",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Mcp-Method",
    "Mcp-Name",
)
EXPOSED_HEADERS = "Mcp-Session-Id, WWW-Authenticate"
# Browsers cache a preflight for at most this long; ten minutes keeps config changes visible quickly.
PREFLIGHT_MAX_AGE_SECONDS = 600
# The loopback names a browser may put in an origin for this machine (RFC 6761 §6.3 ``localhost``, IPv4, IPv6).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` as browsers serialize it (default ports omitted, host lower-cased)."""
    parsed = URL(url)
    origin = parsed.origin()
    return str(origin).rstrip("/").lower()


def with_loopback_aliases(origin: str) -> set[str]:
    """``origin`` plus, when its host is a loopback name, the same scheme and port under the other names."""
    url = URL(origin)
    if url.host not in {"localhost", "127.0.0.1", "::1"}:
        return {origin}
    port = f":{url.explicit_port}" if url.explicit_port is not None else ""
    return {origin, *(f"{url.scheme}://{host}{port}" for host in LOOPBACK_HOSTS)}


class CorsPolicy:
    def __init__(self, public_url: str, allowed_origins: Iterable[str]) -> None:
        own = with_loopback_aliases(origin_of(public_url))
        self._allowed = frozenset({*own, *(origin_of(o) for o in allowed_origins)})

    def allowed(self, origin: str) -> bool:
        return origin.lower() in self._allowed

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers

    def preflight(self, request: web.Request, origin: str) -> web.Response:
        requested = request.headers.get("Access-Control-Request-Headers", "")
        extra = [
            h.strip()
            for h in requested.split(",")
            if h.strip().lower().startswith("mcp-param-") or h.strip().lower().startswith("mcp-")
        ]
        allow_headers = ", ".join(dict.fromkeys([*BASE_ALLOWED_HEADERS, *extra]))
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": allow_headers,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
                "Vary": "Origin",
            },
        )

    @staticmethod
    def actual_headers(origin: str) -> Mapping[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            "Vary": "Origin",
        }
