"""Broker mode's front door: the OAuth 2.1 authorization server MCP clients log in through (issue 5).

Endpoints (all under ``public_url``; the issuer is ``public_url`` itself):

* ``/.well-known/oauth-authorization-server[/<path>]``: RFC 8414 metadata (:mod:`.as_metadata`); the same
  document at ``/.well-known/openid-configuration`` for OIDC-discovery clients;
* ``/oauth/register``: RFC 7591 dynamic client registration (:mod:`.registration`);
* ``/oauth/authorize``: RFC 6749 §4.1.1 with PKCE S256 and RFC 8707 ``resource`` (:mod:`.authorize`);
* ``/oauth/consent``: the POST of the per-client consent page (:mod:`.consent`);
* ``/oauth/callback``: the upstream IdP's redirect URI (:mod:`.callback`);
* ``/oauth/token``: RFC 6749 §3.2, ``authorization_code`` and ``refresh_token`` per DESIGN §8 (:mod:`.token`);
* ``/oauth/revoke``: RFC 7009 (:mod:`.revoke`).

Client ID Metadata Documents (https client ids) are fetched by :mod:`sidecar.oauth.cimd`. Handlers read
the store, the IdP client, the settings and the metrics from the app at request time (the broker lifecycle
in :mod:`sidecar.app` creates them); this package adds only its own state (:data:`OAUTH`).

Register ``<public_url>/oauth/callback`` as the redirect URI of the sidecar's client at the upstream IdP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from sidecar.config import Settings
from sidecar.oauth import as_metadata, authorize, callback, consent, registration, revoke, token
from sidecar.oauth.cimd import CimdFetcher
from sidecar.oauth.common import (
    AS_METADATA_PATH,
    AUTHORIZE_PATH,
    CALLBACK_PATH,
    CONSENT_PATH,
    OIDC_DISCOVERY_PATH,
    REGISTER_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    issuer_of,
)
from sidecar.oauth.context import CIMD_SSL_CONTEXT, OAUTH, OAuthState

__all__ = ["CIMD_SSL_CONTEXT", "OAUTH", "OAuthState", "add_routes", "issuer_of"]

# Browser-based MCP clients (MCP Inspector) call these from another origin. They take no cookies, so a
# wildcard origin exposes nothing a non-browser client could not already do.
_CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
    "Access-Control-Max-Age": "600",
}


async def _preflight(_: web.Request) -> web.Response:
    return web.Response(status=204, headers=_CORS_PREFLIGHT)


async def _metadata_preflight(_: web.Request) -> web.Response:
    return web.Response(status=204, headers={**_CORS_PREFLIGHT, "Access-Control-Allow-Methods": "GET, OPTIONS"})


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the authorization server's endpoints (call before the proxy's catch-all route)."""
    app[OAUTH] = OAuthState.build(settings)
    prefix = settings.public.raw_path.rstrip("/")
    metadata_paths: list[str] = []
    for base in dict.fromkeys(["", prefix]):
        metadata_paths += [base + AS_METADATA_PATH, base + OIDC_DISCOVERY_PATH]
    if prefix:
        # RFC 8414 §3.1: the issuer's path goes after the well-known segment.
        metadata_paths += [AS_METADATA_PATH + prefix, OIDC_DISCOVERY_PATH + prefix]
    for path in dict.fromkeys(metadata_paths):
        app.router.add_get(path, as_metadata.handle)
        app.router.add_route("OPTIONS", path, _metadata_preflight)
    for base in dict.fromkeys(["", prefix]):
        app.router.add_get(base + AUTHORIZE_PATH, authorize.handle)
        app.router.add_post(base + CONSENT_PATH, consent.handle_post)
        app.router.add_get(base + CALLBACK_PATH, callback.handle)
        for path, handler in (
            (TOKEN_PATH, token.handle),
            (REGISTER_PATH, registration.handle),
            (REVOKE_PATH, revoke.handle),
        ):
            app.router.add_post(base + path, handler)
            app.router.add_route("OPTIONS", base + path, _preflight)
    app.cleanup_ctx.append(_oauth_lifecycle)


async def _oauth_lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[OAUTH]
    if CIMD_SSL_CONTEXT in app:
        await state.cimd.close()
        state.cimd = CimdFetcher(
            allow_private=state.settings.cimd_allow_private_addresses, ssl_context=app[CIMD_SSL_CONTEXT]
        )
    try:
        yield
    finally:
        await state.cimd.close()
