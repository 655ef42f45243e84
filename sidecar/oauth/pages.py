"""HTML pages shown to the user's browser: the consent page's frame and error pages.

Every value is HTML-escaped; the pages load nothing, run no script, and may not be framed:
``Content-Security-Policy: default-src 'none'; ...; frame-ancestors 'none'`` (CSP Level 2 §7.7, the
clickjacking defence the MCP security best practices ask consent pages to have) plus ``X-Frame-Options``
for older browsers. Nothing here is cached or leaks a Referer to another origin.

Error pages are for requests that must not be redirected back to the client (RFC 6749 §4.1.2.1: "If the
request fails due to a missing, invalid, or mismatching redirection URI, or if the client identifier is
missing or invalid, the authorization server SHOULD inform the resource owner of the error and MUST NOT
automatically redirect the user-agent to the invalid redirection URI"). A caller asking for JSON (no
``text/html`` in ``Accept``) gets the RFC 6749 §5.2 JSON body with the same status instead.
"""

from __future__ import annotations

import html
from typing import Final

from aiohttp import web

from sidecar.oauth.errors import NO_STORE, Problem

PAGE_HEADERS: Final = {
    **NO_STORE,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on the consent POST, which
    # an attacker's page can send too; same-origin keeps our origin on our own POST and leaks nothing outside.
    "Referrer-Policy": "same-origin",
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "h1{font-size:1.3rem}code,.uri{font-family:ui-monospace,monospace;word-break:break-all}"
    ".box{border:1px solid #ccc;border-radius:8px;padding:1rem 1.25rem}"
    "button{font-size:1rem;padding:.55rem 1.4rem;margin-right:.5rem;border-radius:6px;cursor:pointer}"
    ".primary{background:#1a5fd0;border:1px solid #1a5fd0;color:#fff;font-weight:600}"
    ".secondary{background:#fff;border:1px solid #aaa;color:#333}"
    ".note{color:#666;font-size:.9rem}.scopes li{margin:.35rem 0}.scopes code{color:#777;font-size:.8rem}"
)


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def page(title: str, body_html: str, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>{body_html}</body></html>"
    )
    return web.Response(
        status=status,
        text=document,
        content_type="text/html",
        charset="utf-8",
        headers={**PAGE_HEADERS, **(headers or {})},
    )


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def error_page(request: web.Request, err: Problem) -> web.Response:
    """The error as a page for a browser, as RFC 6749 §5.2 JSON for anything else; same status either way."""
    if not wants_html(request):
        return err.response()
    body = (
        "<h1>Sign-in could not continue</h1>"
        f"<div class=box><p>{esc(err.description)}</p>"
        f"<p class=note>Error code: <code>{esc(err.error)}</code></p></div>"
        "<p class=note>Close this window and start the connection again from your MCP client.</p>"
    )
    return page("Sign-in error", body, status=err.status, headers=err.extra_headers)
