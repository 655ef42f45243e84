"""The broker's persistence (DESIGN §5): the ``TokenStore`` protocol and its memory and Redis backends.

:func:`open_store` builds the store the settings ask for. Callers depend on the protocol and the records in
:mod:`sidecar.store.base` only, never on a backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store.layout import KeyLayout
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.protocols import TokenStore
from sidecar.store.records import (
    CODE_TTL_SECONDS,
    PENDING_TTL_SECONDS,
    Clock,
    Grant,
    ParsedToken,
    RecordCorrupt,
    RotationOutcome,
    RotationResult,
    StoreError,
    StoreUnavailable,
    TokenPair,
    UpstreamCredentials,
    mint_access_token,
    mint_refresh_token,
    new_grant_id,
    parse_client_token,
    token_hash,
)


def open_store(
    settings: Settings,
    keyring: KeyRing,
    *,
    clock: Clock = time.time,
    on_replica_ack_timeout: Callable[[], None] | None = None,
) -> TokenStore:
    """The store named by ``settings.store`` (``memory`` or ``redis``), encrypting with ``keyring``.

    No I/O happens here; call :meth:`TokenStore.ping` to check reachability (``/readyz``) and
    :meth:`TokenStore.close` on shutdown. The Redis store refuses an ephemeral key ring: records encrypted with
    it would be unreadable by every other replica and after a restart (DESIGN §6).
    """
    if settings.store == "memory":
        return MemoryTokenStore(
            keyring,
            key_prefix=settings.key_prefix,
            record_grace_seconds=settings.record_grace_seconds,
            clock=clock,
        )
    if keyring.is_ephemeral:
        raise ValueError("store: redis needs encryption_keys; an ephemeral key would die with this process")
    from sidecar.store.redis import connect  # imported here: the memory store needs no redis client

    return connect(settings, keyring, clock=clock, on_replica_ack_timeout=on_replica_ack_timeout)


__all__ = [
    "CODE_TTL_SECONDS",
    "PENDING_TTL_SECONDS",
    "Clock",
    "Grant",
    "KeyLayout",
    "MemoryTokenStore",
    "ParsedToken",
    "RecordCorrupt",
    "RotationOutcome",
    "RotationResult",
    "StoreError",
    "StoreUnavailable",
    "TokenPair",
    "TokenStore",
    "UpstreamCredentials",
    "mint_access_token",
    "mint_refresh_token",
    "new_grant_id",
    "open_store",
    "parse_client_token",
    "token_hash",
]
