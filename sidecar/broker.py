"""Broker mode's request path: client token -> grant -> fresh upstream credentials -> injected headers.

* The client's bearer is an opaque token minted by the sidecar (``mcpat_<grant-id>.<secret>``); the store knows
  it only by its SHA-256 hash (DESIGN §2, §5). Unknown, expired or revoked -> 401 ``invalid_token``.
* Its grant's upstream credentials come from :class:`sidecar.refresh.CredentialBroker` (refreshed once, never
  stale), and the configured templates put them into the backend request (DESIGN §9).
* Token lookups are cached in-process for ``token_cache_seconds`` at most and never past the token's expiry
  (DESIGN §13): a revoked token stops working within that bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.auth import Identity, reject_for
from sidecar.challenge import InsufficientScope, InvalidToken, ServiceUnavailable
from sidecar.inject import Context, HeaderTemplates
from sidecar.metrics import Metrics
from sidecar.refresh import STORE_RETRY_AFTER_SECONDS, CredentialBroker
from sidecar.store.base import StoreUnavailable, TokenStore, parse_client_token
from sidecar.tokens import BearerProblem, Kind, parse_authorization

# Distinct client tokens remembered; evicted oldest-first when full.
TOKEN_CACHE_ENTRIES = 10_000


@dataclass(slots=True)
class _Seen:
    grant_id: str
    until: float


class BrokerAuthenticator:
    """Checks a client access token minted by this sidecar against the store."""

    def __init__(self, *, store: TokenStore, metrics: Metrics, cache_seconds: float) -> None:
        self._store = store
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Seen] = {}

    def forget(self, token: str) -> None:
        self._cache.pop(token, None)

    async def authenticate(self, authorization: str | None, now: float) -> Identity:
        token = parse_authorization(authorization)
        if isinstance(token, BearerProblem):
            raise reject_for(token)
        seen = self._cache.get(token)
        if seen is not None and now < seen.until:
            return Identity(token, Kind.OPAQUE, {}, seen.grant_id)
        parsed = parse_client_token(token)
        if parsed is None or parsed.kind != "access":
            raise InvalidToken("the token was not issued by this server", reason="unknown_token")
        try:
            found = await self._store.find_access_token(token)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("lookup_access_token").inc()
            raise ServiceUnavailable(
                "the credential store is unreachable; try again shortly", retry_after=STORE_RETRY_AFTER_SECONDS
            ) from exc
        if found is None:
            self._cache.pop(token, None)
            raise InvalidToken("the access token is unknown, expired or revoked", reason="unknown_token")
        grant_id = found.grant_id
        if self._cache_seconds > 0:
            if len(self._cache) >= TOKEN_CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[token] = _Seen(grant_id, min(now + self._cache_seconds, found.expires_at))
        return Identity(token, Kind.OPAQUE, {}, grant_id)


class BrokerResolver:
    """Turns an authenticated identity into the headers the backend receives."""

    def __init__(
        self, *, credentials: CredentialBroker, templates: HeaderTemplates, required_scopes: list[str]
    ) -> None:
        self._credentials = credentials
        self._templates = templates
        self._required = frozenset(required_scopes)
        self._required_sorted = tuple(sorted(self._required))

    async def __call__(self, identity: Identity) -> Mapping[str, str] | None:
        assert identity.grant_id is not None
        grant = await self._credentials.current(identity.grant_id)
        if self._required and not self._required.issubset(grant.scopes):
            raise InsufficientScope("the grant lacks a required scope", scope=self._required_sorted)
        upstream = grant.upstream
        ctx = Context(
            claims=grant.claims,
            access_token=upstream.access_token if upstream else None,
            id_token=upstream.id_token if upstream else None,
            client_id=grant.client_id,
            scopes=grant.scopes,
            subject=grant.subject,
        )
        return self._templates.render(ctx)


class ClaimsResolver:
    """Gate mode with ``inject_headers``: templates filled from the client token's own claims."""

    def __init__(self, templates: HeaderTemplates) -> None:
        self._templates = templates

    async def __call__(self, identity: Identity) -> Mapping[str, str] | None:
        return self._templates.render(Context(claims=identity.claims))
