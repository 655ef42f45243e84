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
from typing import Any

from sidecar.auth import Identity, reject_for
from sidecar.challenge import InsufficientScope, InvalidToken, ServiceUnavailable
from sidecar.idp import IdPUnavailable, IdTokenInvalid, UpstreamIdP
from sidecar.inject import Context, HeaderTemplates
from sidecar.metrics import Metrics
from sidecar.problems import IDP_RETRY_AFTER_SECONDS, STORE_RETRY_AFTER_SECONDS
from sidecar.refresh import CredentialBroker
from sidecar.singleflight import SingleFlight
from sidecar.store.base import AccessTokenInfo, ClientTokenStore, StoreUnavailable, parse_client_token
from sidecar.tokens import BearerProblem, Kind, inspect, parse_authorization
from sidecar.ttlcache import BoundedCache

# Distinct client tokens remembered; evicted oldest-first when full.
TOKEN_CACHE_ENTRIES = 10_000


class BrokerAuthenticator:
    """Checks a client access token minted by this sidecar against the store."""

    def __init__(self, *, store: ClientTokenStore, metrics: Metrics, cache_seconds: float) -> None:
        self._store = store
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        # token -> (grant id, the scopes the token carries)
        self._cache: BoundedCache[str, tuple[str, tuple[str, ...] | None]] = BoundedCache(TOKEN_CACHE_ENTRIES)
        self._lookups: SingleFlight[str, AccessTokenInfo | None] = SingleFlight()

    def forget(self, token: str) -> None:
        self._cache.pop(token)

    async def authenticate(self, authorization: str | None, now: float) -> Identity:
        token = parse_authorization(authorization)
        if isinstance(token, BearerProblem):
            raise reject_for(token)
        cached = self._cache.get(token, now)
        if cached is not None:
            return Identity(token, Kind.OPAQUE, {}, cached[0], cached[1])
        parsed = parse_client_token(token)
        if parsed is None or parsed.kind != "access":
            raise InvalidToken("the token was not issued by this server", reason="unknown_token")
        try:
            # When a busy token's cache entry lapses, one lookup goes to the store for all its requests.
            found = await self._lookups.do(token, lambda: self._store.find_access_token(token))
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("lookup_access_token").inc()
            raise ServiceUnavailable(
                "the credential store is unreachable; try again shortly", retry_after=STORE_RETRY_AFTER_SECONDS
            ) from exc
        if found is None:
            self._cache.pop(token)
            raise InvalidToken("the access token is unknown, expired or revoked", reason="unknown_token")
        grant_id = found.grant_id
        if self._cache_seconds > 0:
            self._cache.put(token, (grant_id, found.scopes), until=min(now + self._cache_seconds, found.expires_at))
        return Identity(token, Kind.OPAQUE, {}, grant_id, found.scopes)


class IdTokenAuthenticator:
    """``client_token: id_token`` (forward mode, seed 000): the client's bearer *is* the upstream id_token.

    It is verified on every request against the IdP's keys (signature, ``iss``, ``aud`` = our IdP client id,
    ``exp`` with leeway); verified tokens are remembered until their ``exp``, never longer. An expired one is
    401, so the client goes back to ``/token``, where a near-expiry id_token is refreshed first.
    """

    def __init__(self, *, idp: UpstreamIdP, metrics: Metrics, leeway: float) -> None:
        self._idp = idp
        self._metrics = metrics
        self._leeway = leeway
        self._cache: BoundedCache[str, dict[str, Any]] = BoundedCache(TOKEN_CACHE_ENTRIES)

    async def authenticate(self, authorization: str | None, now: float) -> Identity:
        token = parse_authorization(authorization)
        if isinstance(token, BearerProblem):
            raise reject_for(token)
        seen = self._cache.get(token, now)
        if seen is not None:
            return Identity(token, Kind.JWT, seen)
        if inspect(token).kind is not Kind.JWT:
            raise InvalidToken("the token is not an ID token issued for this server", reason="malformed")
        try:
            claims = await self._idp.verify_id_token(token)
        except IdTokenInvalid as exc:
            raise InvalidToken(str(exc), reason=exc.kind) from None
        except IdPUnavailable as exc:
            raise ServiceUnavailable(
                "the IdP's signing keys cannot be fetched right now", retry_after=IDP_RETRY_AFTER_SECONDS
            ) from exc
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            self._cache.put(token, claims, until=float(exp) + self._leeway)
        return Identity(token, Kind.JWT, claims)


class IdTokenResolver:
    """Forward mode's headers: templates filled from the verified id_token; ``{upstream.id_token}`` is the
    bearer itself (there is no upstream access token on this path)."""

    def __init__(self, templates: HeaderTemplates) -> None:
        self._templates = templates

    async def __call__(self, identity: Identity) -> Mapping[str, str] | None:
        subject = identity.claims.get("sub")
        ctx = Context(
            claims=identity.claims, id_token=identity.token, subject=subject if isinstance(subject, str) else None
        )
        return self._templates.render(ctx)


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
        # A token from a narrowed refresh carries only its own scopes, never more than the grant's (sealed).
        scopes = grant.scopes if identity.scopes is None else tuple(s for s in grant.scopes if s in identity.scopes)
        if self._required and not self._required.issubset(scopes):
            raise InsufficientScope("the grant lacks a required scope", scope=self._required_sorted)
        upstream = grant.upstream
        ctx = Context(
            claims=grant.claims,
            access_token=upstream.access_token if upstream else None,
            id_token=upstream.id_token if upstream else None,
            client_id=grant.client_id,
            scopes=scopes,
            subject=grant.subject,
        )
        return self._templates.render(ctx)
