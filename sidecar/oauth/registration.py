"""OAuth 2.0 Dynamic Client Registration (RFC 7591), still used by today's MCP clients.

* §2: ``redirect_uris`` are required for the authorization code grant and validated by
  :func:`sidecar.oauth.clients.redirect_uri_problem` (https, or http on loopback; no fragments; private-use
  schemes for ``application_type: native`` only).
* §2: "If unspecified or omitted, the default [token_endpoint_auth_method] is "client_secret_basic"";
  ``none``, ``client_secret_basic`` and ``client_secret_post`` are supported. Clients with a secret-based
  method get a ``client_secret`` (256 random bits) in the answer, once; we keep only its SHA-256.
* §2: ``grant_types`` default to ``authorization_code`` in the RFC; we register ``authorization_code`` and
  ``refresh_token`` when omitted so the refresh grant we advertise is usable, and refuse other grants.
* §3.2.1: the answer is 201 with the registered metadata, ``client_id`` and ``client_id_issued_at``.
* §3.2.2: errors are 400 ``invalid_redirect_uri`` or ``invalid_client_metadata``.
* §5: open registration is rate limited per address (:mod:`sidecar.oauth.ratelimit`); a registration never
  used expires after a day, a used one lives as long as its refresh tokens; at most
  ``max_registered_clients`` are kept (503 ``temporarily_unavailable`` when full).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from typing import Any, Final

from aiohttp import web

from sidecar.oauth.clients import (
    AUTH_METHODS,
    GRANT_TYPES,
    Client,
    clean_name,
    hash_secret,
    is_private_use,
    redirect_uri_problem,
)
from sidecar.oauth.common import SECRET_BYTES, check_rate, read_limited
from sidecar.oauth.context import oauth, store_down, store_of
from sidecar.oauth.errors import (
    NO_STORE,
    InvalidClientMetadata,
    InvalidRedirectUri,
    Problem,
    TemporarilyUnavailable,
)
from sidecar.oauth.outcomes import count
from sidecar.store.base import StoreUnavailable

log = logging.getLogger("sidecar.oauth.registration")

# A registration request is a small JSON object; anything bigger is refused before parsing.
MAX_REGISTRATION_BYTES: Final = 16 * 1024
MAX_REDIRECT_URIS: Final = 20
MAX_NAME_LENGTH: Final = 200
# A registration outlives the refresh tokens it may hold by a day; it is renewed at every token issuance
# (see sidecar.oauth.token), so an active client never loses it and an abandoned one disappears.
REGISTRATION_GRACE_SECONDS: Final = 86_400
# A registration that never obtains a token is gone after a day (issue 12): open registration cannot fill
# the store with clients nobody uses. The first token issuance renews it to ``registration_ttl``.
UNUSED_REGISTRATION_TTL_SECONDS: Final = 86_400.0
# Retry-After for "the registry is full": registrations expire continuously, so a retry may succeed soon.
REGISTRY_FULL_RETRY_AFTER_SECONDS: Final = 60
CLIENT_ID_PREFIX: Final = "mcpc_"


def registration_ttl(refresh_token_ttl_seconds: int) -> float:
    return float(refresh_token_ttl_seconds + REGISTRATION_GRACE_SECONDS)


def _optional_text(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidClientMetadata(f"{key} must be a string")
    return clean_name(value, MAX_NAME_LENGTH)


def validate(meta: Any) -> tuple[Client, dict[str, Any]]:
    """The client to store and the metadata to echo back, or an :class:`OAuthError`.

    Pure: the handler adds ``client_id_issued_at`` from the authorization server's clock.
    """
    if not isinstance(meta, dict):
        raise InvalidClientMetadata("the registration request must be a JSON object")
    uris = meta.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise InvalidRedirectUri("redirect_uris must be a non-empty list")
    # OIDC Registration §2 defaults application_type to "web", but MCP clients that register a private-use
    # scheme (Cursor's "cursor://...") send none: such a client is a native app. An explicit "web" stays web.
    default_type = "native" if any(is_private_use(u) for u in uris) else "web"
    application_type = meta.get("application_type", default_type)
    if application_type not in ("web", "native"):
        raise InvalidClientMetadata("application_type must be 'web' or 'native'")
    if len(uris) > MAX_REDIRECT_URIS:
        raise InvalidRedirectUri(f"at most {MAX_REDIRECT_URIS} redirect URIs")
    for uri in uris:
        problem = redirect_uri_problem(uri, application_type)
        if problem is not None:
            raise InvalidRedirectUri(problem)
    method = meta.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    grant_types = meta.get("grant_types", list(GRANT_TYPES))
    if not isinstance(grant_types, list) or not grant_types or any(g not in GRANT_TYPES for g in grant_types):
        raise InvalidClientMetadata("grant_types may contain authorization_code and refresh_token only")
    if "authorization_code" not in grant_types:
        raise InvalidClientMetadata("grant_types must include authorization_code")
    response_types = meta.get("response_types", ["code"])
    if response_types != ["code"]:
        raise InvalidClientMetadata("response_types must be ['code']")
    scope = meta.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise InvalidClientMetadata("scope must be a space-separated string")
    name = _optional_text(meta, "client_name")
    client_uri = _optional_text(meta, "client_uri")
    client_id = CLIENT_ID_PREFIX + secrets.token_urlsafe(24)
    client = Client(
        client_id=client_id,
        kind="registered",
        redirect_uris=tuple(uris),
        token_endpoint_auth_method=method,
        grant_types=tuple(dict.fromkeys(grant_types)),
        application_type=application_type,
        client_name=name,
        client_uri=client_uri,
    )
    echo: dict[str, Any] = {
        "client_id": client_id,
        "redirect_uris": list(uris),
        "token_endpoint_auth_method": method,
        "grant_types": list(client.grant_types),
        "response_types": ["code"],
        "application_type": application_type,
    }
    for key, value in (("client_name", name), ("client_uri", client_uri), ("scope", scope)):
        if value is not None:
            echo[key] = value
    return client, echo


async def handle(request: web.Request) -> web.Response:
    state = oauth(request)
    try:
        check_rate(request, state.limits["register"])
        raw = await read_limited(request, MAX_REGISTRATION_BYTES)
        if raw is None:
            raise InvalidClientMetadata("the registration request is too large")
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested past the parser's depth
            raise InvalidClientMetadata("the registration request is not valid JSON") from None
        client, echo = validate(meta)
        # RFC 7591 §3.2.1, right after client_id as always; the time is the state's clock (tests move it).
        echo = {"client_id": client.client_id, "client_id_issued_at": int(state.clock()), **echo}
        secret: str | None = None
        if client.confidential:
            secret = secrets.token_urlsafe(SECRET_BYTES)
            client = dataclasses.replace(client, secret_hash=hash_secret(secret))
            echo["client_secret"] = secret
            echo["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: 0 = does not expire
        try:
            stored = await store_of(request).put_client(
                client.client_id,
                client.to_record(),
                ttl=UNUSED_REGISTRATION_TTL_SECONDS,
                max_clients=state.settings.max_registered_clients,
            )
        except StoreUnavailable as exc:
            raise store_down(request, "put_client", exc) from exc
        if not stored:
            log.warning("client registration refused: max_registered_clients reached")
            raise TemporarilyUnavailable(
                "this server holds as many client registrations as it allows (max_registered_clients); "
                "try again later or use a client ID metadata document",
                retry_after=REGISTRY_FULL_RETRY_AFTER_SECONDS,
            )
    except Problem as err:
        count(request, "register", err)
        response = err.response()
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
    count(request, "register", "registered")
    log.info(
        "client registered",
        extra={"client_id": client.client_id, "auth_method": client.token_endpoint_auth_method,
               "client_name": client.client_name},
    )
    return web.Response(
        status=201,
        body=json.dumps(echo).encode(),
        content_type="application/json",
        headers={**NO_STORE, "Access-Control-Allow-Origin": "*"},
    )

