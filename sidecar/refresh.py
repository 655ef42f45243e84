"""Upstream credentials, get-or-refresh: refreshed once, never forwarded stale (DESIGN §7).

1. :func:`needs_refresh` is pure: the access token is missing, or expires within ``skew`` seconds, the skew
   clamped to at most half of the token's lifetime (:func:`effective_skew`), so a skew at or above the IdP's
   token lifetime cannot make every request refresh.
2. In-process single-flight: concurrent requests for one grant share one refresh task.
3. Across replicas: the store's lock (``SET NX PX``, TTL longer than the IdP timeout). The holder re-reads the
   record (another replica may have refreshed it already), calls the IdP's ``refresh_token`` grant
   (RFC 6749 §6), keeps the old refresh token when the IdP returns none, and writes with compare-and-set on
   ``generation`` at once: the IdP has consumed the old refresh token, so its answer is stored before
   anything else can fail. A new ID token is verified afterwards and adopted by a second write only when it
   verifies. Waiters poll the record, not the IdP. ``client_token: id_token`` refreshes through the same
   engine (:meth:`CredentialBroker.refresh_id_token`).
4. ``invalid_grant`` / ``invalid_client``, or no refresh token and an expired access token: the upstream
   credentials are dropped (the grant is dead: ``/oauth/token`` answers ``invalid_grant``) and the client is
   told to re-authorize (401). Timeout / 5xx: nothing is dropped; the current token is used while it is still
   valid, else 503 + ``Retry-After``.
5. An expired upstream access token is never returned, so never forwarded.

Decrypted credentials are cached in-process for at most ``token_cache_seconds`` and never past
``access_expires_at - skew`` (DESIGN §13), so revocation and store outages show within that bound.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sidecar.audit import AuditLog
from sidecar.challenge import InvalidToken, ServiceUnavailable
from sidecar.idp import IdPError, IdPRejected, TokenSet, UpstreamIdP
from sidecar.metrics import Metrics
from sidecar.problems import IDP_RETRY_AFTER_SECONDS, STORE_RETRY_AFTER_SECONDS
from sidecar.singleflight import SingleFlight
from sidecar.store.base import Grant, RecordCorrupt, RefreshStore, StoreUnavailable, UpstreamCredentials

log = logging.getLogger("sidecar.refresh")

# Waiters poll the grant record this often while another replica holds the refresh lock: a Redis read is
# ~0.1 ms, and an IdP round trip takes tens of milliseconds, so this adds little latency and little load.
LOCK_POLL_SECONDS = 0.05
# Defaults of idp_max_concurrency and idp_timeout_seconds (the settings pass their own values).
DEFAULT_IDP_MAX_CONCURRENCY = 16
DEFAULT_IDP_TIMEOUT_SECONDS = 10.0
# A refreshed credential the IdP has already rotated exists only in this process until it is written: on a store
# error the write is retried (the lock is still held) for this long at most, which rides out a Sentinel or
# Cluster failover (seconds), before the rotation is given up for lost. The lock TTL bounds it as well.
ROTATED_WRITE_RETRY_SECONDS = 10.0
ROTATED_WRITE_BACKOFF_SECONDS = (0.05, 0.1, 0.2, 0.4, 0.8)
# The retries stop this long before the refresh lock would expire, so no other replica refreshes meanwhile.
LOCK_MARGIN_SECONDS = 1.0
# Distinct grants whose decrypted credentials are remembered in-process; evicted oldest-first.
CACHE_ENTRIES = 10_000

REAUTHORIZE = "the upstream authorization ended; re-authorization is needed"
# The refresh skew is at most this fraction of the upstream access token's lifetime (see effective_skew).
MAX_SKEW_FRACTION = 0.5

# Which credential a refresh is for: the access token (the proxied path) or the ID token (client_token:
# id_token at /oauth/token). Both go through the same engine: single flight, store lock, re-read, adopt.
Need = Callable[[UpstreamCredentials, float], bool]


def effective_skew(creds: UpstreamCredentials, skew: float) -> float:
    """``skew``, clamped to at most half of the access token's lifetime (when the lifetime is known).

    A skew at or above the IdP's token lifetime would otherwise make every request refresh; half the
    lifetime keeps a refresh to at most one per half lifetime whatever the setting.
    """
    if creds.access_expires_at is not None and creds.access_issued_at is not None:
        lifetime = creds.access_expires_at - creds.access_issued_at
        if lifetime > 0:
            return min(skew, lifetime * MAX_SKEW_FRACTION)
    return skew


def needs_refresh(creds: UpstreamCredentials, now: float, skew: float) -> bool:
    """True when the upstream access token is missing or expires within the (clamped) skew of ``now``."""
    if creds.access_token is None:
        return True
    return creds.access_expires_at is not None and now >= creds.access_expires_at - effective_skew(creds, skew)


def id_token_needs_refresh(creds: UpstreamCredentials, now: float, threshold: float) -> bool:
    """``client_token: id_token``: the ID token is missing or has less than ``threshold`` seconds left."""
    if creds.id_token is None or creds.id_token_expires_at is None:
        return True
    return creds.id_token_expires_at - now < threshold


def usable(creds: UpstreamCredentials, now: float) -> bool:
    """True while the upstream access token may still be sent: present and not yet expired."""
    if creds.access_token is None:
        return False
    return creds.access_expires_at is None or now < creds.access_expires_at


def dead(creds: UpstreamCredentials | None, now: float) -> bool:
    """True when nothing can renew the grant any more: no upstream credentials, or no refresh token and an
    expired access token. Such a grant answers ``invalid_grant`` at ``/oauth/token`` (no 200-then-401 loop)."""
    return creds is None or (creds.refresh_token is None and not usable(creds, now))


def cache_deadline(creds: UpstreamCredentials, now: float, cache_seconds: float, skew: float) -> float:
    """How long decrypted credentials may be reused without asking the store again (DESIGN §13)."""
    until = now + cache_seconds
    if creds.access_expires_at is not None:
        until = min(until, creds.access_expires_at - effective_skew(creds, skew))
    return until


def merged_credentials(
    old: UpstreamCredentials,
    tokens: TokenSet,
    *,
    issued_at: float | None = None,
    id_token: str | None = None,
    id_token_exp: float | None = None,
) -> UpstreamCredentials:
    """The record after a refresh: the old refresh token stays when the IdP returns none (RFC 6749 §6:
    "The authorization server MAY issue a new refresh token, in which case the client MUST discard the old
    refresh token"). The ID token is replaced only by a *verified* one (``id_token``); else the old stays."""
    return UpstreamCredentials(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token or old.refresh_token,
        id_token=id_token or old.id_token,
        access_expires_at=tokens.expires_at,
        refresh_expires_at=None if tokens.refresh_token else old.refresh_expires_at,
        id_token_expires_at=id_token_exp if id_token else old.id_token_expires_at,
        access_issued_at=issued_at,
    )


@dataclass(slots=True)
class _Cached:
    grant: Grant
    until: float


class CredentialBroker:
    """Returns a grant whose upstream access token is valid now, refreshing it first when needed."""

    def __init__(
        self,
        *,
        store: RefreshStore,
        idp: UpstreamIdP,
        metrics: Metrics,
        skew: float,
        lock_seconds: float,
        cache_seconds: float,
        max_concurrency: int = DEFAULT_IDP_MAX_CONCURRENCY,
        slot_timeout: float = DEFAULT_IDP_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
    ) -> None:
        self._audit = audit
        self._store = store
        # At most this many refreshes talk to the IdP at once (idp_max_concurrency): when a thousand grants
        # expire together, the IdP sees a steady trickle, not a burst it answers with 429s or falls over from.
        self._slots = asyncio.Semaphore(max_concurrency)
        self._slot_timeout = slot_timeout
        self._idp = idp
        self._metrics = metrics
        self._skew = skew
        self._lock_ms = int(lock_seconds * 1000)
        self._lock_seconds = lock_seconds
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._reads: SingleFlight[str, Grant | None] = SingleFlight()
        self._refreshes: SingleFlight[str, Grant] = SingleFlight()

    def forget(self, grant_id: str) -> None:
        """Drop a cached grant (after revocation or a write made elsewhere in this process)."""
        self._cache.pop(grant_id, None)

    def _remember(self, grant: Grant, now: float) -> None:
        if grant.upstream is None or self._cache_seconds <= 0:
            return
        until = cache_deadline(grant.upstream, now, self._cache_seconds, self._skew)
        if until <= now:
            return
        if len(self._cache) >= CACHE_ENTRIES and grant.grant_id not in self._cache:
            self._cache.pop(next(iter(self._cache)))
        self._cache[grant.grant_id] = _Cached(grant, until)

    async def _read(self, grant_id: str) -> Grant | None:
        try:
            return await self._store.get_grant(grant_id)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("get_grant").inc()
            raise ServiceUnavailable(
                "the credential store is unreachable; try again shortly", retry_after=STORE_RETRY_AFTER_SECONDS
            ) from exc
        except RecordCorrupt as exc:
            # Unreadable with every key in the ring (a key was removed too early, or the record was altered):
            # the only way forward for this user is a new login.
            self._metrics.store_errors.labels("record_corrupt").inc()
            log.error("grant record cannot be read", extra={"grant": grant_id, "error": str(exc)})
            raise InvalidToken(REAUTHORIZE, reason="reauthorize") from None

    def _access_need(self, creds: UpstreamCredentials, now: float) -> bool:
        return needs_refresh(creds, now, self._skew)

    async def current(self, grant_id: str) -> Grant:
        """The grant with a valid upstream access token, or an HTTP problem (401 re-authorize / 503)."""
        now = self._clock()
        cached = self._cache.get(grant_id)
        if cached is not None and now < cached.until:
            return cached.grant
        # When the cache entry of a busy grant lapses, one read goes to the store for all of its requests.
        grant = await self._reads.do(grant_id, lambda: self._read(grant_id))
        if grant is None:
            self.forget(grant_id)
            raise InvalidToken("the token's grant is unknown or was revoked", reason="unknown_grant")
        if grant.upstream is None:
            self.forget(grant_id)
            raise InvalidToken(REAUTHORIZE, reason="reauthorize")
        if not needs_refresh(grant.upstream, now, self._skew):
            self._remember(grant, now)
            return grant
        # One refresh per grant in this process, shared by every request that needs it (DESIGN §7.2).
        return await self._refreshes.do(grant_id, lambda: self._refresh(grant_id, self._access_need, access=True))

    async def refresh_id_token(self, grant: Grant, threshold: float) -> Grant:
        """``client_token: id_token``: the grant with an ID token that has at least ``threshold`` seconds left,
        refreshed through the same engine as access tokens. Raises 401 (re-authorize) or 503 like
        :meth:`current`; when the IdP's new ID token does not verify, the rotated tokens are stored and the
        grant keeps its previous ID token."""
        assert grant.upstream is not None
        if not id_token_needs_refresh(grant.upstream, self._clock(), threshold) or grant.upstream.refresh_token is None:
            return grant

        def need(creds: UpstreamCredentials, now: float) -> bool:
            return id_token_needs_refresh(creds, now, threshold)

        fresh = await self._refreshes.do(grant.grant_id + "#id_token", lambda: self._refresh(grant.grant_id, need))
        self.forget(grant.grant_id)
        return fresh

    async def _refresh(self, grant_id: str, need: Need, *, access: bool = False) -> Grant:
        # The slot is taken before the refresh lock, so the lock's TTL covers only the IdP call itself.
        try:
            async with asyncio.timeout(self._slot_timeout):
                await self._slots.acquire()
        except TimeoutError:
            grant = await self._read(grant_id)
            if grant is None or grant.upstream is None:
                raise InvalidToken(REAUTHORIZE, reason="reauthorize") from None
            return self._fallback(grant, self._clock(), "too many upstream refreshes are waiting for the IdP")
        try:
            return await self._refresh_slot(grant_id, need, access=access)
        finally:
            self._slots.release()

    async def _refresh_slot(self, grant_id: str, need: Need, *, access: bool) -> Grant:
        owner = secrets.token_hex(8)
        deadline = time.monotonic() + self._lock_seconds + 1.0
        waited = False
        while True:
            try:
                got = await self._store.acquire_lock(grant_id, owner, self._lock_ms)
            except StoreUnavailable as exc:
                self._metrics.store_errors.labels("acquire_lock").inc()
                raise ServiceUnavailable(
                    "the credential store is unreachable", retry_after=STORE_RETRY_AFTER_SECONDS
                ) from exc
            if got:
                try:
                    fresh = await self._refresh_locked(grant_id, need, access=access)
                finally:
                    try:
                        await self._store.release_lock(grant_id, owner)
                    except StoreUnavailable:
                        self._metrics.store_errors.labels("release_lock").inc()  # expires by its TTL
                self._remember(fresh, self._clock())
                return fresh
            if not waited:
                self._metrics.lock_waits.inc()
                waited = True
            await asyncio.sleep(LOCK_POLL_SECONDS)
            grant = await self._read(grant_id)
            now = self._clock()
            if grant is None:
                raise InvalidToken("the token's grant is unknown or was revoked", reason="unknown_grant")
            if grant.upstream is None:
                raise InvalidToken(REAUTHORIZE, reason="reauthorize")
            if not need(grant.upstream, now):
                self._metrics.upstream_refreshes.labels("adopted").inc()
                self._remember(grant, now)
                return grant  # another replica refreshed: adopt its write
            if time.monotonic() > deadline:
                if usable(grant.upstream, now):
                    return grant
                raise ServiceUnavailable(
                    "an upstream refresh in progress elsewhere did not finish in time",
                    retry_after=IDP_RETRY_AFTER_SECONDS,
                )

    async def _write_rotated(
        self, grant_id: str, generation: int, new: UpstreamCredentials, locked_at: float
    ) -> bool:
        """compare_and_set_upstream, retried through a short store outage while the refresh lock still holds."""
        deadline = locked_at + min(ROTATED_WRITE_RETRY_SECONDS, self._lock_seconds - LOCK_MARGIN_SECONDS)
        attempt = 0
        while True:
            try:
                return await self._store.compare_and_set_upstream(grant_id, generation, new)
            except StoreUnavailable:
                pause = ROTATED_WRITE_BACKOFF_SECONDS[min(attempt, len(ROTATED_WRITE_BACKOFF_SECONDS) - 1)]
                if time.monotonic() + pause > deadline:
                    raise
                self._metrics.store_errors.labels("compare_and_set").inc()
                attempt += 1
                await asyncio.sleep(pause)

    async def _refresh_locked(self, grant_id: str, need: Need, *, access: bool) -> Grant:
        started = time.monotonic()
        grant = await self._read(grant_id)  # re-read under the lock: another replica may have written
        now = self._clock()
        if grant is None:
            raise InvalidToken("the token's grant is unknown or was revoked", reason="unknown_grant")
        creds = grant.upstream
        if creds is None:
            raise InvalidToken(REAUTHORIZE, reason="reauthorize")
        if not need(creds, now):
            self._metrics.upstream_refreshes.labels("adopted").inc()
            return grant
        if creds.refresh_token is None:
            if usable(creds, now) or not access:
                return grant
            # Nothing can renew this grant: mark it dead (upstream dropped), so /oauth/token answers
            # invalid_grant instead of minting client tokens that would only get 401 again.
            self._metrics.upstream_refreshes.labels("no_refresh_token").inc()
            await self._drop(grant)
            raise InvalidToken(REAUTHORIZE, reason="reauthorize")
        try:
            tokens = await self._idp.refresh(creds.refresh_token)
        except IdPRejected as exc:
            if exc.drops_credentials:
                self._metrics.upstream_refreshes.labels("rejected").inc()
                self._record(grant, "invalid_grant")
                log.warning("upstream refresh rejected; credentials dropped",
                            extra={"grant": grant_id, "error": exc.error, "description": exc.description})
                await self._drop(grant)
                raise InvalidToken(REAUTHORIZE, reason="reauthorize") from None
            self._record(grant, "unavailable")
            return self._fallback(grant, now, f"the IdP refused the refresh ({exc.error})")
        except IdPError as exc:
            self._record(grant, "unavailable")
            return self._fallback(grant, now, f"the IdP is unavailable ({type(exc).__name__})")
        # The IdP may just have rotated (and so consumed) the refresh token: its answer is stored before
        # anything else can fail. Reusing a consumed refresh token looks like theft to a rotating IdP, which
        # then revokes the whole grant. The new ID token is adopted only once it verifies (second write).
        rotated = merged_credentials(creds, tokens, issued_at=now)
        written = await self._write(grant, rotated, locked_at=started)
        self._metrics.upstream_refreshes.labels("refreshed").inc()
        self._record(grant, "ok")
        if written is None:
            latest = await self._read(grant_id)  # lost the race (lock expired mid-refresh): take the winner's
            if latest is None or latest.upstream is None:
                raise InvalidToken(REAUTHORIZE, reason="reauthorize")
            return latest
        log.info("upstream credentials refreshed", extra={"grant": grant_id})
        if tokens.id_token is None:
            return written
        try:
            claims = await self._idp.verify_id_token(tokens.id_token)
        except IdPError as exc:
            self._metrics.upstream_refreshes.labels("id_token_rejected").inc()
            log.warning(
                "the refreshed id_token did not verify; the rotated tokens are stored, the previous id_token kept",
                extra={"grant": grant_id, "error": type(exc).__name__},
            )
            return written
        exp = claims.get("exp")
        verified = replace(
            rotated, id_token=tokens.id_token, id_token_expires_at=float(exp) if isinstance(exp, int | float) else None
        )
        try:
            final = await self._write(written, verified)
        except ServiceUnavailable:
            return written  # the rotated tokens are safe; the new id_token is fetched again next time
        return final if final is not None else written

    async def _write(self, grant: Grant, new: UpstreamCredentials, *, locked_at: float | None = None) -> Grant | None:
        """Compare-and-set the upstream credentials; the grant as written, or ``None`` when another wrote. With
        ``locked_at`` (the IdP has just rotated) a store error is retried while the refresh lock still holds."""
        try:
            if locked_at is None:
                written = await self._store.compare_and_set_upstream(grant.grant_id, grant.generation, new)
            else:
                written = await self._write_rotated(grant.grant_id, grant.generation, new, locked_at)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("compare_and_set").inc()
            # The IdP may have rotated the refresh token we could not save: the next refresh may fail with
            # invalid_grant. Nothing better is possible without the store; say so and let the client retry.
            log.error("refreshed upstream credentials could not be stored", extra={"grant": grant.grant_id})
            raise ServiceUnavailable(
                "the credential store is unreachable", retry_after=STORE_RETRY_AFTER_SECONDS
            ) from exc
        if not written:
            return None
        return replace(grant, generation=grant.generation + 1, updated_at=self._clock(), upstream=new)

    async def _drop(self, grant: Grant) -> None:
        try:
            await self._store.drop_upstream(grant.grant_id, grant.generation)
        except StoreUnavailable:
            self._metrics.store_errors.labels("drop_upstream").inc()
        self.forget(grant.grant_id)

    def _record(self, grant: Grant, outcome: str) -> None:
        if self._audit is not None:
            self._audit.emit(
                "upstream.refresh",
                {"grant": grant.grant_id, "sub": grant.subject, "client_id": grant.client_id, "outcome": outcome},
            )

    def _fallback(self, grant: Grant, now: float, why: str) -> Grant:
        """IdP trouble: keep everything; use the current token while valid, else 503."""
        assert grant.upstream is not None
        if usable(grant.upstream, now):
            self._metrics.upstream_refreshes.labels("failed_kept_valid").inc()
            log.warning("upstream refresh failed; current token still valid", extra={"grant": grant.grant_id,
                                                                                      "reason": why})
            return grant
        self._metrics.upstream_refreshes.labels("failed").inc()
        log.warning("upstream refresh failed; no valid token left", extra={"grant": grant.grant_id, "reason": why})
        raise ServiceUnavailable(f"{why}; try again shortly", retry_after=IDP_RETRY_AFTER_SECONDS)
