"""The store's seams: small protocols by what each consumer needs, and ``TokenStore``, their union.

A consumer depends on the narrowest protocol that covers its calls (DESIGN §5), so a reader sees what it
can touch and a test fake implements only that:

* :class:`StoreLifecycle`: ``ping`` and ``close`` (the readiness check in ``app.py``, shutdown);
* :class:`GrantStore`: grants and their upstream credentials (``refresh.py`` with :class:`LockStore`,
  ``admin.py``, the callback and revocation endpoints);
* :class:`ClientTokenStore`: the client's opaque tokens (``broker.py`` looks them up; the token and revocation
  endpoints issue, rotate and revoke them);
* :class:`LockStore`: the per-grant refresh lock (``refresh.py``);
* :class:`ClientStore`: client registrations (``oauth/registration.py``, ``oauth/clients.py``, ``admin.py``);
* :class:`LoginStore`: authorization codes, pending logins and remembered consent (``oauth/``).

:class:`TokenStore` is what a backend implements (memory, Redis) and what :func:`sidecar.store.open_store`
returns. Every method may raise :class:`~sidecar.store.records.StoreUnavailable` (the backend is down or
slow: answer 503 and keep state); reads of a damaged record raise
:class:`~sidecar.store.records.RecordCorrupt`. Durations are seconds unless the name says ``_ms``; times
are epoch seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sidecar.store.records import (
    CODE_TTL_SECONDS,
    PENDING_TTL_SECONDS,
    AccessTokenInfo,
    Grant,
    RotationResult,
    TokenPair,
    UpstreamCredentials,
)


class StoreLifecycle(Protocol):
    """Readiness and shutdown."""

    async def ping(self) -> None:
        """Readiness: return when the backend answers, else raise :class:`StoreUnavailable`."""

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""


class GrantStore(Protocol):
    """Grants and their upstream credentials (DESIGN §5, §7)."""

    async def create_grant(
        self,
        *,
        subject: str,
        client_id: str,
        scopes: Sequence[str],
        claims: Mapping[str, Any],
        upstream: UpstreamCredentials | None,
    ) -> Grant:
        """Store a new grant with a fresh random id and generation 1."""

    async def get_grant(self, grant_id: str) -> Grant | None:
        """The grant with its decrypted upstream credentials, or ``None`` if unknown, expired or revoked."""

    async def compare_and_set_upstream(
        self,
        grant_id: str,
        expected_generation: int,
        upstream: UpstreamCredentials,
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> bool:
        """Replace the upstream credentials (and claims, if given) only if ``generation`` is still
        ``expected_generation``; bumps the generation. ``False`` if another writer got there first or the
        grant is gone: re-read and decide again."""

    async def drop_upstream(self, grant_id: str, expected_generation: int) -> bool:
        """Forget the upstream credentials after ``invalid_grant`` (compare-and-set like above); the grant
        stays so its client tokens answer "re-authorize" rather than "unknown"."""

    async def delete_grant(self, grant_id: str) -> bool:
        """Revoke the grant and every client token of it. ``True`` if the grant existed."""


class ClientTokenStore(Protocol):
    """The client's opaque tokens (DESIGN §2), single-use refresh rotation (§8)."""

    async def issue_tokens(
        self,
        grant_id: str,
        *,
        access_token: str,
        refresh_token: str | None,
        access_ttl: float,
        refresh_ttl: float,
    ) -> TokenPair | None:
        """Record a newly minted pair (hashes only) for a live grant; ``None`` if the grant is gone."""

    async def lookup_access_token(self, token: str) -> str | None:
        """The grant id of a live access token, else ``None`` (unknown, expired, revoked, grant gone)."""

    async def find_access_token(self, token: str) -> AccessTokenInfo | None:
        """Like :meth:`lookup_access_token`, with the token's expiry (so callers can cache it safely)."""

    async def rotate_refresh_token(
        self,
        grant_id: str,
        old_refresh_token: str,
        *,
        new_access_token: str,
        new_refresh_token: str,
        access_ttl: float,
        refresh_ttl: float,
        replay_grace: float,
        scopes: Sequence[str] | None = None,
    ) -> RotationResult:
        """Single-use rotation as one atomic step (DESIGN §8); see :class:`RotationOutcome`. ``scopes``: the
        new access token carries only these (a narrowed refresh); ``None`` = the grant's."""

    async def revoke_token(self, token: str) -> bool:
        """RFC 7009: revoke an access token, or a live refresh token together with its whole grant.
        ``True`` if something was revoked; unknown tokens are not an error."""


class LockStore(Protocol):
    """The per-grant refresh lock (DESIGN §7.3)."""

    async def acquire_lock(self, grant_id: str, owner: str, ttl_ms: int) -> bool:
        """Take the grant's refresh lock for ``ttl_ms`` unless someone holds it."""

    async def release_lock(self, grant_id: str, owner: str) -> bool:
        """Release the lock only if ``owner`` still holds it."""


class ClientStore(Protocol):
    """Client registrations (RFC 7591), sealed."""

    async def put_client(
        self, client_id: str, metadata: Mapping[str, Any], *, ttl: float | None = None, max_clients: int | None = None
    ) -> bool:
        """Store a client registration, sealed in an envelope (client secrets only as hashes). With
        ``max_clients``, a *new* client is refused (``False``) while that many live registrations exist; a
        known one is always rewritten (renewal). ``True`` when stored."""

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        """The registration, or ``None``; an edited record raises :class:`RecordCorrupt`."""


class LoginStore(Protocol):
    """Authorization codes, pending logins and remembered consent: the login in flight."""

    async def put_code(self, code: str, payload: Mapping[str, Any], *, ttl: float = CODE_TTL_SECONDS) -> None:
        """Store an authorization code's payload (encrypted) under the code's hash."""

    async def take_code(self, code: str) -> dict[str, Any] | None:
        """Get-and-delete in one step: a code redeems at most once."""

    async def put_pending(self, state: str, payload: Mapping[str, Any], *, ttl: float = PENDING_TTL_SECONDS) -> None:
        """Store a pending login (encrypted: it holds the upstream PKCE verifier) under the state's hash."""

    async def take_pending(self, state: str) -> dict[str, Any] | None:
        """Get-and-delete in one step: an IdP callback is processed at most once."""

    async def put_consent(self, subject: str, client_id: str, scopes: Sequence[str], *, ttl: float) -> None:
        """Remember that ``subject`` allowed ``client_id`` these scopes (sealed)."""

    async def get_consent(self, subject: str, client_id: str) -> frozenset[str] | None:
        """The remembered scopes, or ``None``; an edited record raises :class:`RecordCorrupt`."""


class RefreshStore(GrantStore, LockStore, Protocol):
    """What get-or-refresh of upstream credentials needs: grants and their lock (``refresh.py``)."""


class TokenStore(StoreLifecycle, GrantStore, ClientTokenStore, LockStore, ClientStore, LoginStore, Protocol):
    """Persistence for the broker: every narrow protocol above, as each backend implements it."""
