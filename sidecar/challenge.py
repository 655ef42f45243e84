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

from sidecar.problems import MAX_DESCRIPTION_BYTES, Problem, Reason, Unavailable, sanitize

__all__ = [
    "MAX_DESCRIPTION_BYTES",
    "AuthProblem",
    "BadGateway",
    "BadRequest",
    "ForbiddenOrigin",
    "GatewayTimeout",
    "HTTPProblem",
    "HeaderTooLarge",
    "InsufficientScope",
    "InvalidToken",
    "MethodNotAllowed",
    "MissingToken",
    "ServiceUnavailable",
    "bearer_challenge",
    "json_body",
    "sanitize",
]


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


# The proxied path's problems are the program's one problem model (sidecar.problems); the old name stays.
HTTPProblem = Problem
ServiceUnavailable = Unavailable


class AuthProblem(Problem):
    """401/403 with a Bearer challenge. ``error=None`` is the no-credentials challenge of RFC 6750 §3.1."""

    status = 401
    error = "invalid_token"
    reason: Reason = "invalid_token"

    def __init__(self, description: str, *, scope: Iterable[str] = (), reason: Reason | None = None) -> None:
        super().__init__(description, reason=reason)
        self.scope = tuple(scope)

    def challenge_error(self) -> str | None:
        return self.error

    def challenge(self, resource_metadata: str | None) -> str | None:
        return bearer_challenge(
            resource_metadata=resource_metadata or "",
            error=self.challenge_error(),
            description=self.description,
            scope=self.scope,
        )


class MissingToken(AuthProblem):
    error = "invalid_request"
    reason: Reason = "missing_token"

    def challenge_error(self) -> str | None:
        # RFC 6750 §3.1: no error code when the request carries no credentials at all.
        return None


class InvalidToken(AuthProblem):
    error = "invalid_token"


class InsufficientScope(AuthProblem):
    status = 403
    error = "insufficient_scope"
    reason: Reason = "insufficient_scope"


class AccessDenied(Problem):
    """403 from ``tool_policy``: a claim or condition rule failed, or the default is deny (more scopes would not
    help, so there is no step-up challenge)."""

    status = 403
    error = "access_denied"
    reason: Reason = "access_denied"


class PayloadTooLarge(Problem):
    status = 413
    error = "invalid_request"
    reason: Reason = "payload_too_large"


class RequestTimeout(Problem):
    status = 408
    error = "invalid_request"
    reason: Reason = "request_timeout"


class HeaderTooLarge(Problem):
    status = 431
    error = "invalid_request"
    reason: Reason = "header_too_large"


class ForbiddenOrigin(Problem):
    status = 403
    error = "forbidden_origin"
    reason: Reason = "forbidden_origin"


class BadRequest(Problem):
    status = 400
    error = "invalid_request"
    reason: Reason = "bad_request"


class MethodNotAllowed(Problem):
    """405 on the sidecar's own paths (RFC 9110 §15.5.6): a method they do not serve is answered here, never
    relayed to the MCP server under the sidecar's own path."""

    status = 405
    error = "invalid_request"
    reason: Reason = "bad_request"

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}", headers={"Allow": allowed})


class BadGateway(Problem):
    status = 502
    error = "bad_gateway"
    reason: Reason = "bad_gateway"


class GatewayTimeout(Problem):
    status = 504
    error = "gateway_timeout"
    reason: Reason = "gateway_timeout"
