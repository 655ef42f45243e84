"""Per-app state of the authorization server, held in typed ``web.AppKey``s (DESIGN §12).

:class:`OAuthState` is built by :func:`sidecar.oauth.add_routes` from the settings; the store, the IdP client
and the metrics are read from the app at request time (the broker lifecycle creates them).
``CIMD_SSL_CONTEXT`` is a test seam: a test that serves client metadata documents over a self-signed
certificate on loopback puts an ``ssl.SSLContext`` trusting it here before the app starts. There is no
setting for it: production always verifies certificates against the system trust store.

``OAuthState.clock`` is the one wall-clock of the OAuth handlers (issue dates, token lifetimes, whether an
upstream authorization is dead); tests drive time by replacing it. Monotonic deadlines (rate limits, the
metadata document cache) keep their own clocks.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import Settings
from sidecar.idp import IdPClient
from sidecar.keys import CREDENTIALS, IDP, METRICS, SETTINGS, STORE
from sidecar.metrics import Metrics
from sidecar.oauth.cimd import CimdError, CimdFetcher, looks_like_metadata_url
from sidecar.oauth.clients import Client
from sidecar.oauth.common import Endpoints, default_scopes, supported_scopes
from sidecar.oauth.errors import TemporarilyUnavailable
from sidecar.oauth.ratelimit import RateLimiter
from sidecar.problems import STORE_RETRY_AFTER_SECONDS
from sidecar.store.base import RecordCorrupt, StoreUnavailable, TokenStore

if TYPE_CHECKING:
    from sidecar.refresh import CredentialBroker

# Every OAuth endpoint a client or browser can call has its own per-address budget (issue 12).
RATE_LIMITED_ENDPOINTS = ("register", "authorize", "consent", "callback", "token", "revoke")
# Retry-After for a 503 caused by the store (DESIGN §4: the caller should try again shortly).


@dataclass
class OAuthState:
    settings: Settings
    endpoints: Endpoints
    supported_scopes: list[str]
    default_scopes: list[str]
    cimd: CimdFetcher
    limits: dict[str, RateLimiter]
    clock: Callable[[], float] = field(default=time.time)

    @classmethod
    def build(cls, settings: Settings, *, cimd_ssl: ssl.SSLContext | None = None) -> OAuthState:
        per_minute = settings.rate_limit_per_minute
        return cls(
            settings=settings,
            endpoints=Endpoints.from_settings(settings),
            supported_scopes=supported_scopes(settings),
            default_scopes=default_scopes(settings),
            cimd=CimdFetcher(allow_private=settings.cimd_allow_private_addresses, ssl_context=cimd_ssl),
            limits={name: RateLimiter(per_minute) for name in RATE_LIMITED_ENDPOINTS},
        )


OAUTH = web.AppKey("oauth", OAuthState)
CIMD_SSL_CONTEXT = web.AppKey("oauth_cimd_ssl_context", ssl.SSLContext)


def oauth(request: web.Request) -> OAuthState:
    return request.app[OAUTH]


def store_of(request: web.Request) -> TokenStore:
    return request.app[STORE]


def idp_of(request: web.Request) -> IdPClient:
    return request.app[IDP]


def credentials_of(request: web.Request) -> CredentialBroker:
    """The get-or-refresh engine (single flight, store lock) shared with the proxied path."""
    return request.app[CREDENTIALS]


def metrics_of(request: web.Request) -> Metrics:
    return request.app[METRICS]


def settings_of(request: web.Request) -> Settings:
    return request.app[SETTINGS]


def store_down(request: web.Request, operation: str, exc: StoreUnavailable) -> TemporarilyUnavailable:
    """Count the failure and turn it into a 503 (DESIGN §4: "store unreachable ... 503, nothing is deleted")."""
    metrics_of(request).store_errors.labels(operation).inc()
    return TemporarilyUnavailable(
        "the credential store is unreachable; try again shortly", retry_after=STORE_RETRY_AFTER_SECONDS
    )


class UnknownClient(Exception):
    """The client id names no registration, or its metadata document is unusable (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def resolve_client(request: web.Request, client_id: str | None) -> Client:
    """The client behind ``client_id``: a registration from the store or a fetched metadata document.

    Raises :class:`UnknownClient`, or :class:`TemporarilyUnavailable` when the store is down.
    """
    if not client_id:
        raise UnknownClient("client_id is missing")
    if looks_like_metadata_url(client_id):
        try:
            return await oauth(request).cimd.get(client_id)
        except CimdError as exc:
            raise UnknownClient(exc.reason) from None
    try:
        record = await store_of(request).get_client(client_id)
    except StoreUnavailable as exc:
        raise store_down(request, "get_client", exc) from exc
    except RecordCorrupt:
        # Logged by the store; an edited registration is never trusted (issue 12).
        raise UnknownClient("the client's registration cannot be trusted; register again") from None
    client = Client.from_record(record) if record is not None else None
    if client is None or client.client_id != client_id:
        raise UnknownClient("the client is not registered")
    return client
