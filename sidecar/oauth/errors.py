"""Typed OAuth errors: each carries its ``error`` code and HTTP status and renders its own answer.

* RFC 6749 §5.2: token endpoint errors are JSON ``{"error", "error_description"}``, status 400, except
  ``invalid_client``: "the authorization server MAY return an HTTP 401 (Unauthorized) status code ... If the
  client attempted to authenticate via the "Authorization" request header field, the authorization server
  MUST respond with an HTTP 401 (Unauthorized) status code and include the "WWW-Authenticate" response
  header field". We always answer 401 with ``WWW-Authenticate: Basic``.
* RFC 6749 §4.1.2.1: authorization errors travel back to the client's redirect URI (``error``, ``state``), but
  only once the client and its redirect URI are known to be valid; before that the user sees an error page.
* RFC 7591 §3.2.2: registration errors ``invalid_redirect_uri`` and ``invalid_client_metadata``.
* RFC 8707 §2: ``invalid_target`` for a ``resource`` that is not ours.
* RFC 6585 §4: 429 Too Many Requests with ``Retry-After``.

Descriptions are ours (never an IdP's raw text: that is sanitized first by ``sidecar.idp``) and are passed
through :func:`sidecar.challenge.sanitize` before they are rendered.
"""

from __future__ import annotations

import json

from aiohttp import web

from sidecar.challenge import sanitize

# Answers of the OAuth endpoints carry credentials or per-user state: never cached (RFC 6749 §5.1: "The
# authorization server MUST include the HTTP "Cache-Control" response header field with a value of
# "no-store" in any response containing tokens, credentials, or other sensitive information").
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """Base class: ``error`` is the RFC error code, ``status`` the HTTP status."""

    error = "server_error"
    status = 400

    def __init__(self, description: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = sanitize(description, 300)
        self.extra_headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers={**NO_STORE, **self.extra_headers},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, {self.description!r})"


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description, headers={"WWW-Authenticate": 'Basic realm="mcp-auth-sidecar"'})


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    """The user (or a forged request acting as the user) is refused: 403 on our own pages."""

    error = "access_denied"
    status = 403


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class ServerError(OAuthError):
    error = "server_error"
    status = 500


class TemporarilyUnavailable(OAuthError):
    """The store or the IdP cannot answer now: 503 + ``Retry-After`` (DESIGN §4); nothing was changed."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str, *, retry_after: int = 2) -> None:
        super().__init__(description, headers={"Retry-After": str(retry_after)})


class RequestTimeout(OAuthError):
    """The request body did not arrive within ``request_body_timeout_seconds`` (RFC 9110 §15.5.9: 408)."""

    error = "invalid_request"
    status = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} seconds", headers={"Connection": "close"})


class RateLimited(OAuthError):
    error = "too_many_requests"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many requests from this address; slow down", headers={"Retry-After": str(max(1, retry_after))}
        )
