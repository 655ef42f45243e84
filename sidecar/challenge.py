"""Typed errors that render their own HTTP answer: the contract with MCP clients (DESIGN §4).

* RFC 6750 §3: the ``WWW-Authenticate: Bearer`` challenge; §3.1: "If the request lacks any authentication
  information ..., the resource server SHOULD NOT include an error code or other error information."
* RFC 9728 §5.1: the ``resource_metadata`` parameter points at the protected-resource metadata.
* RFC 6585 §5: 431 for a header field that is too large.

Bodies are JSON ``{"error": ..., "error_description": ...}``; descriptions are sanitized before they are
rendered (no control characters, at most 120 bytes, quoted-string safe).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aiohttp import web

MAX_DESCRIPTION_BYTES = 120


def sanitize(text: str, limit: int = MAX_DESCRIPTION_BYTES) -> str:
    """Printable ASCII-safe text for headers and logs: control characters dropped, at most ``limit`` bytes."""
    cleaned = "".join(ch for ch in text if ch.isprintable())
    data = cleaned.encode("utf-8")
    if len(data) > limit:
        cleaned = data[:limit].decode("utf-8", "ignore")
    return cleaned


def _quote(value: str) -> str:
    # RFC 9110 §5.6.4 quoted-string; RFC 6750 §3 restricts error_description to %x20-21 / %x23-5B / %x5D-7E,
    # so quotes and backslashes are replaced, and anything outside ASCII printable too.
    safe = "".join(ch if 0x20 <= ord(ch) <= 0x7E and ch not in '"\\' else "'" if ch == '"' else "?"
                   for ch in value)
    return f'"{safe}"'


def bearer_challenge(
    *,
    resource_metadata: str,
    error: str | None = None,
    description: str | None = None,
    scope: Iterable[str] = (),
) -> str:
    params: list[str] = []
    if error:
        params.append(f"error={_quote(error)}")
        if description:
            params.append(f"error_description={_quote(sanitize(description))}")
    scopes = " ".join(scope)
    if scopes:
        params.append(f"scope={_quote(scopes)}")
    params.append(f"resource_metadata={_quote(resource_metadata)}")
    return "Bearer " + ", ".join(params)


def json_body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": sanitize(description, 500)}).encode()


class HTTPProblem(Exception):
    """An answer the sidecar gives itself. Subclasses set status and OAuth-style error code."""

    status = 500
    error = "server_error"

    def __init__(self, description: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.extra_headers = headers or {}

    def response(self, resource_metadata: str) -> web.Response:
        headers = {"Cache-Control": "no-store", **self.extra_headers}
        return web.Response(
            status=self.status,
            body=json_body(self.error, self.description),
            content_type="application/json",
            headers=headers,
        )


class AuthProblem(HTTPProblem):
    """401/403 with a Bearer challenge. ``error=None`` is the no-credentials challenge of RFC 6750 §3.1."""

    status = 401
    error = "invalid_token"
    reason = "invalid_token"  # metrics label

    def __init__(self, description: str, *, scope: Iterable[str] = (), reason: str | None = None) -> None:
        super().__init__(description)
        self.scope = tuple(scope)
        if reason:
            self.reason = reason

    def challenge_error(self) -> str | None:
        return self.error

    def response(self, resource_metadata: str) -> web.Response:
        resp = super().response(resource_metadata)
        resp.headers["WWW-Authenticate"] = bearer_challenge(
            resource_metadata=resource_metadata,
            error=self.challenge_error(),
            description=self.description,
            scope=self.scope,
        )
        return resp


class MissingToken(AuthProblem):
    error = "invalid_request"
    reason = "missing_token"

    def challenge_error(self) -> str | None:
        # RFC 6750 §3.1: no error code when the request carries no credentials at all.
        return None


class InvalidToken(AuthProblem):
    error = "invalid_token"


class InsufficientScope(AuthProblem):
    status = 403
    error = "insufficient_scope"
    reason = "insufficient_scope"


class AccessDenied(HTTPProblem):
    """403 from ``tool_policy``: a claim or condition rule failed, or the default is deny (more scopes would not
    help, so there is no step-up challenge)."""

    status = 403
    error = "access_denied"
    reason = "access_denied"


class PayloadTooLarge(HTTPProblem):
    status = 413
    error = "invalid_request"


class RequestTimeout(HTTPProblem):
    status = 408
    error = "invalid_request"


class HeaderTooLarge(HTTPProblem):
    status = 431
    error = "invalid_request"


class ForbiddenOrigin(HTTPProblem):
    status = 403
    error = "forbidden_origin"


class BadRequest(HTTPProblem):
    status = 400
    error = "invalid_request"


class ServiceUnavailable(HTTPProblem):
    """503 + Retry-After: the caller should try again (IdP or store down)."""

    status = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str, *, retry_after: int = 5) -> None:
        super().__init__(description, headers={"Retry-After": str(retry_after)})


class BadGateway(HTTPProblem):
    status = 502
    error = "bad_gateway"


class GatewayTimeout(HTTPProblem):
    status = 504
    error = "gateway_timeout"
