"""Real Redis (a redis-server on a free port) and a real OIDC provider (oidc-provider-mock behind a front that
rotates refresh tokens and counts refresh calls) for the broker's request path."""

from __future__ import annotations

from tests.support.oidc import idp_front, oidc_mock  # noqa: F401
from tests.support.redis_servers import redis_url  # noqa: F401
