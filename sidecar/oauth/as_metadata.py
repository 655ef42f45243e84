"""OAuth 2.0 Authorization Server Metadata (RFC 8414) and the OpenID discovery path, for broker mode.

* RFC 8414 §3: served at ``/.well-known/oauth-authorization-server`` with the issuer's path inserted after
  it (§3.1), and, for clients that only try OpenID Connect Discovery 1.0 §4, at
  ``<issuer>/.well-known/openid-configuration``. Both carry the same document.
* RFC 8414 §3.3: "The issuer value returned MUST be identical to the authorization server's issuer
  identifier value into which the well-known URI string was inserted": :func:`issuer_of` is the one source
  of that string, also used for RFC 9728 ``authorization_servers`` and RFC 9207 ``iss``.
* RFC 8414 §2 fields: ``grant_types_supported`` (``authorization_code``, ``refresh_token``),
  ``code_challenge_methods_supported: ["S256"]`` (RFC 7636 §4.2; ``plain`` is refused), ``scopes_supported``
  including ``offline_access``, registration (RFC 7591) and revocation (RFC 7009) endpoints.
* RFC 9207 §3: ``authorization_response_iss_parameter_supported: true``.
* Client ID Metadata Documents: ``client_id_metadata_document_supported: true`` (MCP 2025-11-25).
"""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

from sidecar.oauth.context import OAuthState, oauth

# Clients may cache the document briefly; it changes only with a configuration change and rollout.
AS_METADATA_MAX_AGE_SECONDS: Final = 300
CLIENT_AUTH_METHODS: Final = ["client_secret_basic", "client_secret_post", "none"]


def document(state: OAuthState) -> dict[str, Any]:
    ep = state.endpoints
    return {
        "issuer": ep.issuer,
        "authorization_endpoint": ep.authorize,
        "token_endpoint": ep.token,
        "registration_endpoint": ep.register,
        "revocation_endpoint": ep.revoke,
        "scopes_supported": state.supported_scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }


async def handle(request: web.Request) -> web.Response:
    return web.Response(
        body=json.dumps(document(oauth(request))).encode(),
        content_type="application/json",
        headers={
            "Cache-Control": f"public, max-age={AS_METADATA_MAX_AGE_SECONDS}",
            "Access-Control-Allow-Origin": "*",
        },
    )
