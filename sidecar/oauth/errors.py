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
through :func:`sidecar.problems.sanitize` before they are rendered. Every class here is a
:class:`sidecar.problems.Problem` (the program's one problem model); the 503 is the shared
:class:`sidecar.problems.Unavailable`.
"""

from __future__ import annotations

from sidecar.problems import NO_STORE, Problem, Reason, Unavailable

__all__ = ["NO_STORE", "OAuthError", "Problem", "TemporarilyUnavailable"]


class OAuthError(Problem):
    """An OAuth endpoint's error: ``error`` is the RFC error code, ``status`` the HTTP status."""

    error = "server_error"
    status = 400
    reason: Reason = "oauth_error"
    description_limit = 300


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
    reason: Reason = "access_denied"


class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"


class ServerError(OAuthError):
    error = "server_error"
    status = 500


# The store or the IdP cannot answer now: 503 + ``Retry-After`` (DESIGN §4); nothing was changed. The same
# class as the proxied path's 503.
TemporarilyUnavailable = Unavailable


class RequestTimeout(OAuthError):
    """The request body did not arrive within ``request_body_timeout_seconds`` (RFC 9110 §15.5.9: 408)."""

    error = "invalid_request"
    status = 408

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} seconds", headers={"Connection": "close"})


class RateLimited(OAuthError):
    error = "too_many_requests"
    status = 429
    reason: Reason = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many requests from this address; slow down", headers={"Retry-After": str(max(1, retry_after))}
        )
