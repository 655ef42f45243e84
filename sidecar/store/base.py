"""The store contract, re-exported in one place: records and errors (:mod:`sidecar.store.records`), their
sealed codecs (:mod:`sidecar.store.codecs`), the key layout (:mod:`sidecar.store.layout`) and the protocols
(:mod:`sidecar.store.protocols`).

Implements DESIGN §5 (store), the persistence half of §7 (compare-and-set on ``generation``, refresh lock)
and §8 (single-use client refresh tokens with a replay grace and family revocation), for the two backends
in :mod:`sidecar.store.memory` and :mod:`sidecar.store.redis`, which pass one contract suite.

Rules every backend keeps:

* Tokens exist in the store only as SHA-256 hex digests (in key names) or inside AES-256-GCM envelopes
  (:mod:`sidecar.crypto`) whose associated data is the record's own key. Upstream credentials, the
  successor pair kept for a refresh replay, authorization codes' and pending logins' payloads are
  envelopes. So is every field that grants identity or access (issue 12): a grant's subject, client id and
  scopes (field ``idn``) and its claims (``claims``), each with its own associated data (record key plus a
  field suffix, so envelopes cannot be swapped between fields), a client registration (redirect URIs,
  auth method, secret hash) and a remembered consent's scopes. A record edited in Redis fails to open:
  :class:`RecordCorrupt`, logged, never trusted. What stays plain are counters and expiries.
* Every key of one grant carries the Redis Cluster hash tag ``{<grant-id>}``, so each multi-key operation
  is one Lua script on one slot (DESIGN §5).
* Each record stores its own logical expiry and reads enforce it against the store's clock; Redis TTLs only
  reclaim memory. Both backends therefore agree under an injected clock.
* A grant record lives until its longest-lived live credential (client refresh or access token, upstream
  refresh, access or id token) has expired, plus ``record_grace_seconds``; the deadline is recomputed on
  every write. It is never deleted because an access token expired: that is what makes refresh possible.
* RFC 6749 §10.5 / RFC 9700 §4.14.2 for the client's tokens: an authorization code is single use (taken
  with an atomic get-and-delete); a refresh token is single use ("the authorization server issues a new
  refresh token ... and invalidates the old one"), and a reused one revokes the whole grant.
* Backend failures surface as :class:`StoreUnavailable` only (callers answer 503 with ``Retry-After``);
  a record that cannot be decoded or decrypted surfaces as :class:`RecordCorrupt` (callers treat the grant
  as gone and ask the user to re-authorize).

Client tokens have the shape ``<prefix>_<grant-id>.<secret>`` (DESIGN §2) so the store can find the grant's
hash-tagged keys from the token alone; :func:`mint_access_token` and :func:`mint_refresh_token` make them.
"""

from __future__ import annotations

from sidecar.store.codecs import (
    access_record,
    check_access_record,
    check_token_for,
    check_ttl,
    decode_grant,
    encrypt_upstream,
    grant_deadline_ms,
    integrity_failure,
    make_pair,
    new_grant_fields,
    open_access_record,
    open_payload,
    open_scopes,
    open_successor,
    refresh_record_genuine,
    scope_suffix,
    seal_access_record,
    seal_claims,
    seal_payload,
    seal_refresh_record,
    seal_scopes,
    to_ms,
)
from sidecar.store.layout import (
    KeyLayout,
    access_member,
    refresh_member,
    successor_member,
)
from sidecar.store.protocols import (
    ClientStore,
    ClientTokenStore,
    GrantStore,
    LockStore,
    LoginStore,
    RefreshStore,
    StoreLifecycle,
    TokenStore,
)
from sidecar.store.records import (
    ACCESS_TOKEN_PREFIX,
    CODE_TTL_SECONDS,
    CREDENTIALS_FORMAT_VERSION,
    GRANT_FORMAT_VERSION,
    GRANT_ID_PATTERN,
    MIN_RECORD_TTL_MS,
    PAYLOAD_FORMAT_VERSION,
    PENDING_TTL_SECONDS,
    REFRESH_TOKEN_PREFIX,
    SUCCESSOR_SLACK_MS,
    AccessTokenInfo,
    Clock,
    Grant,
    ParsedToken,
    RecordCorrupt,
    RotationOutcome,
    RotationResult,
    StoreError,
    StoreUnavailable,
    TokenKind,
    TokenPair,
    UpstreamCredentials,
    mint_access_token,
    mint_refresh_token,
    new_grant_id,
    parse_client_token,
    token_hash,
)

__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "CODE_TTL_SECONDS",
    "CREDENTIALS_FORMAT_VERSION",
    "GRANT_FORMAT_VERSION",
    "GRANT_ID_PATTERN",
    "MIN_RECORD_TTL_MS",
    "PAYLOAD_FORMAT_VERSION",
    "PENDING_TTL_SECONDS",
    "REFRESH_TOKEN_PREFIX",
    "SUCCESSOR_SLACK_MS",
    "AccessTokenInfo",
    "ClientStore",
    "ClientTokenStore",
    "Clock",
    "Grant",
    "GrantStore",
    "KeyLayout",
    "LockStore",
    "LoginStore",
    "ParsedToken",
    "RecordCorrupt",
    "RefreshStore",
    "RotationOutcome",
    "RotationResult",
    "StoreError",
    "StoreLifecycle",
    "StoreUnavailable",
    "TokenKind",
    "TokenPair",
    "TokenStore",
    "UpstreamCredentials",
    "access_member",
    "access_record",
    "check_access_record",
    "check_token_for",
    "check_ttl",
    "decode_grant",
    "encrypt_upstream",
    "grant_deadline_ms",
    "integrity_failure",
    "make_pair",
    "mint_access_token",
    "mint_refresh_token",
    "new_grant_fields",
    "new_grant_id",
    "open_access_record",
    "open_payload",
    "open_scopes",
    "open_successor",
    "parse_client_token",
    "refresh_member",
    "refresh_record_genuine",
    "scope_suffix",
    "seal_access_record",
    "seal_claims",
    "seal_payload",
    "seal_refresh_record",
    "seal_scopes",
    "successor_member",
    "to_ms",
    "token_hash",
]
