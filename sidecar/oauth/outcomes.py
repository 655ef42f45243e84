"""Counting what the OAuth endpoints answered (metrics by outcome, DESIGN §11), in one place per surface.

An outcome is a success word (``registered``, ``approved``, ``issued``, ...) or the RFC 6749 error code the client
got; a rate-limited request is also counted per endpoint in ``mcp_sidecar_rate_limited_total``.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from sidecar.oauth.context import metrics_of
from sidecar.oauth.errors import Problem, RateLimited

Surface = Literal["register", "consent", "login", "authorize", "token"]
# Grant types counted under their own label; anything else a client sends is "other" (bounded cardinality).
GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})


def outcome_of(err: Problem) -> str:
    return err.error


def count(request: web.Request, surface: Surface, outcome: str | Problem, grant_type: str | None = None) -> None:
    metrics = metrics_of(request)
    if isinstance(outcome, Problem):
        if isinstance(outcome, RateLimited):
            metrics.rate_limited.labels(surface).inc()
        outcome = outcome_of(outcome)
    if surface == "register":
        metrics.oauth_registrations.labels(outcome).inc()
    elif surface == "consent":
        metrics.oauth_consents.labels(outcome).inc()
    elif surface == "login":
        metrics.oauth_logins.labels(outcome).inc()
    elif surface == "token":
        kind = grant_type if grant_type in GRANT_TYPES else "other"
        metrics.oauth_token_grants.labels(kind, outcome).inc()
