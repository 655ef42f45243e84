"""One problem model for the whole program (DESIGN §4, §12).

Every answer the sidecar gives itself instead of the backend's, on the proxied path and on the OAuth
endpoints alike, is a :class:`Problem`: an exception that carries its HTTP status, its RFC error code
(``error``: RFC 6749 §5.2, RFC 6750 §3.1), a typed :data:`Reason` for metrics and audit, and renders itself.
Subclasses add only what their surface needs: the Bearer challenge of the proxied path
(:mod:`sidecar.challenge`), ``WWW-Authenticate: Basic`` for ``invalid_client`` (:mod:`sidecar.oauth.errors`).

Third-party exceptions never reach a handler: each boundary translates them once (the store in
``sidecar/store/redis.py``, the IdP in ``sidecar/idp/transport.py``, the backend in ``sidecar/backend.py``) into its
own typed errors, which the engines turn into problems.
"""

from __future__ import annotations

import json
from typing import Literal, get_args

from aiohttp import web

MAX_DESCRIPTION_BYTES = 120

# Why a request was refused, as counted in metrics (``mcp_sidecar_auth_rejections_total{reason}``) and written
# to the audit trail. A closed set: a label never comes from input.
Reason = Literal[
    "missing_token",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_audience",
    "bad_issuer",
    "bad_claims",
    "opaque_rejected",
    "unknown_token",
    "unknown_grant",
    "reauthorize",
    "insufficient_scope",
    "invalid_token",
    "access_denied",
    "forbidden_origin",
    "bad_request",
    "header_too_large",
    "payload_too_large",
    "request_timeout",
    "rate_limited",
    "unavailable",
    "bad_gateway",
    "gateway_timeout",
    "oauth_error",
    "server_error",
]
REASONS: frozenset[str] = frozenset(get_args(Reason))

# Retry-After seconds of each 503, in one place. The store heals fastest (a failover, a reconnect); an IdP
# that timed out is asked less often; a key set that cannot be fetched is retried on the JWKS refetch interval.
STORE_RETRY_AFTER_SECONDS = 2
IDP_RETRY_AFTER_SECONDS = 5
KEYS_RETRY_AFTER_SECONDS = 10

# RFC 6749 §5.1: "The authorization server MUST include the HTTP "Cache-Control" response header field with a
# value of "no-store" in any response containing tokens, credentials, or other sensitive information". Every
# problem answer is per-request state: never cached by anyone.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def sanitize(text: str, limit: int = MAX_DESCRIPTION_BYTES) -> str:
    """Printable text for headers, bodies and logs: control characters dropped, at most ``limit`` bytes."""
    cleaned = "".join(ch for ch in text if ch.isprintable())
    data = cleaned.encode("utf-8")
    if len(data) > limit:
        cleaned = data[:limit].decode("utf-8", "ignore")
    return cleaned


class Problem(Exception):
    """An answer the sidecar gives itself. Subclasses set ``status``, ``error`` and ``reason``."""

    status = 500
    error = "server_error"
    reason: Reason = "server_error"
    description_limit = 500

    def __init__(self, description: str, *, headers: dict[str, str] | None = None, reason: Reason | None = None):
        super().__init__(description)
        self.description = sanitize(description, self.description_limit)
        self.extra_headers = dict(headers or {})
        if reason is not None:
            self.reason = reason

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def challenge(self, resource_metadata: str | None) -> str | None:
        """The ``WWW-Authenticate`` value this problem answers with, if any."""
        return None

    def response(self, resource_metadata: str | None = None) -> web.Response:
        headers = {**NO_STORE, **self.extra_headers}
        challenge = self.challenge(resource_metadata)
        if challenge is not None:
            headers["WWW-Authenticate"] = challenge
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=headers,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, {self.description!r})"


class Unavailable(Problem):
    """503 + ``Retry-After``: a dependency (store, IdP, key set) cannot answer now; nothing was changed and the
    caller should try again (DESIGN §4). The one 503 of both surfaces."""

    status = 503
    error = "temporarily_unavailable"
    reason: Reason = "unavailable"

    def __init__(self, description: str, *, retry_after: int = 2) -> None:
        super().__init__(description, headers={"Retry-After": str(max(1, int(retry_after)))})
        self.retry_after = max(1, int(retry_after))
