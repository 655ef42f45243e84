"""The store contract: the ``TokenStore`` protocol, its records, its errors and its key layout.

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

import enum
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from sidecar.crypto import DecryptError, KeyRing

log = logging.getLogger("sidecar.store")

# ---------------------------------------------------------------------------------------------------------
# Constants (formats are versioned; every duration says why it is what it is)

# The ``v`` field of a grant record. Version 2 (issue 12) keeps subject, client, scopes and claims inside
# AES-GCM envelopes; version 1 kept them in clear and is refused (its owner re-authorizes).
GRANT_FORMAT_VERSION: Final = 2
CREDENTIALS_FORMAT_VERSION: Final = 1  # the ``v`` field inside the encrypted upstream credentials
PAYLOAD_FORMAT_VERSION: Final = 1  # the ``v`` field inside encrypted code / pending / successor payloads

# RFC 6749 §4.1.2: "A maximum authorization code lifetime of 10 minutes is RECOMMENDED"; clients redeem
# within seconds, so one minute (DESIGN §5) keeps a stolen code's window short.
CODE_TTL_SECONDS: Final = 60
# A pending login spans the user's trip through the IdP's login and consent pages (DESIGN §5: 10 min).
PENDING_TTL_SECONDS: Final = 600
# A just-written record must stay readable by its writer even when every credential in it has expired and
# record_grace_seconds is 0 (PEXPIRE 0 would delete it at once); one second is enough for that.
MIN_RECORD_TTL_MS: Final = 1000
# The successor pair of a rotated refresh token is kept a little longer than the replay grace so that the
# logical check (rotated_at + grace >= now, on the store's clock) decides, not Redis' own expiry timer.
SUCCESSOR_SLACK_MS: Final = 2000

ACCESS_TOKEN_PREFIX: Final = "mcpat"
REFRESH_TOKEN_PREFIX: Final = "mcprt"
_TOKEN_SECRET_BYTES: Final = 32  # 256 bits of entropy per client token (RFC 6749 §10.10: unguessable)
_GRANT_ID_BYTES: Final = 16  # 128-bit grant ids: unguessable and collision-free in practice

GRANT_ID_PATTERN: Final = re.compile(r"[0-9a-f]{32}")
_TOKEN_PATTERN: Final = re.compile(r"(mcpat|mcprt)_([0-9a-f]{32})\.[A-Za-z0-9_\-]{20,100}")

Clock = Callable[[], float]
"""Seconds since the epoch (``time.time``); injected so tests can move time."""


# ---------------------------------------------------------------------------------------------------------
# Errors


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreUnavailable(StoreError):
    """The backend could not be reached or did not answer in time. Nothing was decided: answer 503.

    The message names the operation and the failure class, never a token, key or password.
    """


class RecordCorrupt(StoreError):
    """A record exists but cannot be read: unknown format version, bad JSON, or its envelope does not open
    (key retired from the ring, or ciphertext moved from another record). Treat the grant as gone."""


# ---------------------------------------------------------------------------------------------------------
# Records


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True, slots=True)
class UpstreamCredentials:
    """The IdP's tokens for one grant, stored encrypted. Expiries are epoch seconds, ``None`` if unknown."""

    access_token: str | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    access_expires_at: float | None = None
    refresh_expires_at: float | None = None
    id_token_expires_at: float | None = None
    # When the access token was received (epoch seconds): its lifetime bounds the refresh skew (refresh.py).
    access_issued_at: float | None = None

    def longest_expiry(self) -> float | None:
        """The latest known expiry among the credentials present (drives the grant record's lifetime)."""
        pairs = (
            (self.access_token, self.access_expires_at),
            (self.refresh_token, self.refresh_expires_at),
            (self.id_token, self.id_token_expires_at),
        )
        known = [exp for token, exp in pairs if token is not None and exp is not None]
        return max(known) if known else None

    def to_json(self) -> bytes:
        body = {
            "v": CREDENTIALS_FORMAT_VERSION,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
            "access_expires_at": self.access_expires_at,
            "refresh_expires_at": self.refresh_expires_at,
            "id_token_expires_at": self.id_token_expires_at,
            "access_issued_at": self.access_issued_at,
        }
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> UpstreamCredentials:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != CREDENTIALS_FORMAT_VERSION:
            raise ValueError("unsupported upstream credentials format")
        return cls(
            access_token=_opt_str(body.get("access_token")),
            refresh_token=_opt_str(body.get("refresh_token")),
            id_token=_opt_str(body.get("id_token")),
            access_expires_at=_opt_float(body.get("access_expires_at")),
            refresh_expires_at=_opt_float(body.get("refresh_expires_at")),
            id_token_expires_at=_opt_float(body.get("id_token_expires_at")),
            access_issued_at=_opt_float(body.get("access_issued_at")),
        )

    def __repr__(self) -> str:
        return (
            f"UpstreamCredentials(access_token={_mask(self.access_token)}, "
            f"refresh_token={_mask(self.refresh_token)}, id_token={_mask(self.id_token)}, "
            f"access_expires_at={self.access_expires_at!r}, refresh_expires_at={self.refresh_expires_at!r}, "
            f"id_token_expires_at={self.id_token_expires_at!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Grant:
    """One user's authorization of one client: identity, scopes and (maybe) upstream credentials.

    ``generation`` increases on every change of ``upstream`` and is the compare-and-set token of DESIGN §7.
    ``upstream`` is ``None`` after :meth:`TokenStore.drop_upstream` (the user must re-authorize).
    ``expires_at`` is the record's own deadline (longest live credential + grace).
    """

    grant_id: str
    subject: str
    client_id: str
    scopes: tuple[str, ...]
    generation: int
    created_at: float
    updated_at: float
    expires_at: float
    claims: Mapping[str, Any] = field(default_factory=dict)
    upstream: UpstreamCredentials | None = None


@dataclass(frozen=True, slots=True)
class TokenPair:
    """A client access token and (optionally) refresh token with their expiries (epoch seconds)."""

    access_token: str
    access_expires_at: float
    refresh_token: str | None = None
    refresh_expires_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"TokenPair(access_token='***', access_expires_at={self.access_expires_at!r}, "
            f"refresh_token={_mask(self.refresh_token)}, refresh_expires_at={self.refresh_expires_at!r})"
        )

    __str__ = __repr__

    def to_json(self) -> bytes:
        body = {
            "v": PAYLOAD_FORMAT_VERSION,
            "at": self.access_token,
            "at_exp": self.access_expires_at,
            "rt": self.refresh_token,
            "rt_exp": self.refresh_expires_at,
        }
        return json.dumps(body, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> TokenPair:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != PAYLOAD_FORMAT_VERSION or not isinstance(body["at"], str):
            raise ValueError("unsupported token pair format")
        return cls(
            access_token=body["at"],
            access_expires_at=float(body["at_exp"]),
            refresh_token=_opt_str(body.get("rt")),
            refresh_expires_at=_opt_float(body.get("rt_exp")),
        )


class RotationOutcome(enum.Enum):
    """What :meth:`TokenStore.rotate_refresh_token` did (DESIGN §8)."""

    ROTATED = "rotated"  # the old token was live and unused: the new pair is now the live one
    REPLAYED = "replayed"  # the old token was rotated within the grace: the same new pair is handed back
    REUSE_DETECTED = "reuse_detected"  # rotated before the grace: the whole grant has been revoked
    INVALID = "invalid"  # unknown, expired, revoked, or the grant is gone: answer invalid_grant


@dataclass(frozen=True, slots=True)
class RotationResult:
    outcome: RotationOutcome
    tokens: TokenPair | None = None  # set for ROTATED and REPLAYED


TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class ParsedToken:
    kind: TokenKind
    grant_id: str


# ---------------------------------------------------------------------------------------------------------
# Tokens and ids (pure)


def new_grant_id() -> str:
    return secrets.token_hex(_GRANT_ID_BYTES)


def _mint(prefix: str, grant_id: str) -> str:
    if not GRANT_ID_PATTERN.fullmatch(grant_id):
        raise ValueError("not a grant id")
    return f"{prefix}_{grant_id}.{secrets.token_urlsafe(_TOKEN_SECRET_BYTES)}"


def mint_access_token(grant_id: str) -> str:
    """A new opaque client access token for ``grant_id``: ``mcpat_<grant-id>.<secret>``."""
    return _mint(ACCESS_TOKEN_PREFIX, grant_id)


def mint_refresh_token(grant_id: str) -> str:
    """A new opaque client refresh token for ``grant_id``: ``mcprt_<grant-id>.<secret>``."""
    return _mint(REFRESH_TOKEN_PREFIX, grant_id)


def parse_client_token(token: str) -> ParsedToken | None:
    """Kind and grant id of a token minted here, or ``None`` for anything else (no store lookup)."""
    match = _TOKEN_PATTERN.fullmatch(token)
    if match is None:
        return None
    kind: TokenKind = "access" if match.group(1) == ACCESS_TOKEN_PREFIX else "refresh"
    return ParsedToken(kind, match.group(2))


def token_hash(value: str) -> str:
    """SHA-256 hex digest: the only form in which a token, code or state names a record."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Key layout (DESIGN §5)


class KeyLayout:
    """Builds every key name. All keys of one grant share the hash tag ``{<grant-id>}``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c in prefix for c in "{}: "):
            raise ValueError("the key prefix must be non-empty without '{', '}', ':' or spaces")
        self.prefix = prefix

    def grant_base(self, grant_id: str) -> str:
        return f"{self.prefix}:{{{grant_id}}}"

    def grant(self, grant_id: str) -> str:
        return f"{self.grant_base(grant_id)}:grant"

    def index(self, grant_id: str) -> str:
        """Sorted set of the grant's token keys (member ``at:<sha>`` …, score = expiry in ms)."""
        return f"{self.grant_base(grant_id)}:idx"

    def lock(self, grant_id: str) -> str:
        return f"{self.grant_base(grant_id)}:lock"

    def member_key(self, grant_id: str, member: str) -> str:
        return f"{self.grant_base(grant_id)}:{member}"

    def client(self, client_id: str) -> str:
        return f"{self.prefix}:client:{client_id}"

    def code(self, code: str) -> str:
        return f"{self.prefix}:code:{token_hash(code)}"

    def pending(self, state: str) -> str:
        # The state travels in URLs; it is hashed here like a token so the key list shows no live value.
        return f"{self.prefix}:pending:{token_hash(state)}"

    def clients(self) -> str:
        """Sorted set of live registrations (member client id, score = expiry in ms): the global cap."""
        return f"{self.prefix}:clients"

    def consent(self, subject: str, client_id: str) -> str:
        return f"{self.prefix}:consent:{token_hash(subject + chr(0) + client_id)}"


def access_member(digest: str) -> str:
    return f"at:{digest}"


def refresh_member(digest: str) -> str:
    return f"rt:{digest}"


def successor_member(digest: str) -> str:
    """Where the pair that replaced refresh token ``digest`` is kept (encrypted) during the replay grace."""
    return f"rtnext:{digest}"


# ---------------------------------------------------------------------------------------------------------
# Record codecs shared by the backends (the grant record is a flat string map: a Redis hash)


def to_ms(seconds: float) -> int:
    return int(seconds * 1000)


def grant_deadline_ms(up_exp_ms: int, client_exp_ms: int, now_ms: int, grace_ms: int) -> int:
    """Longest live credential + grace, never less than :data:`MIN_RECORD_TTL_MS` from now."""
    deadline = max(up_exp_ms, client_exp_ms, now_ms) + grace_ms
    return max(deadline, now_ms + MIN_RECORD_TTL_MS)


def encrypt_upstream(keyring: KeyRing, record_key: str, upstream: UpstreamCredentials | None) -> tuple[str, int]:
    """``(envelope or "", longest expiry in ms or 0)`` for the grant fields ``up`` and ``up_exp``."""
    if upstream is None:
        return "", 0
    longest = upstream.longest_expiry()
    return keyring.encrypt(upstream.to_json(), record_key=record_key), to_ms(longest) if longest else 0


_IDENTITY_FIELD_AAD: Final = "#idn"
_CLAIMS_FIELD_AAD: Final = "#claims"


def seal_claims(keyring: KeyRing, record_key: str, claims: Mapping[str, Any]) -> str:
    """The grant's ``claims`` field: the ID token claims kept for header injection, as an envelope."""
    raw = json.dumps(dict(claims), separators=(",", ":")).encode("utf-8")
    return keyring.encrypt(raw, record_key=record_key + _CLAIMS_FIELD_AAD)


def integrity_failure(record_key: str, reason: str) -> RecordCorrupt:
    """Log (once, here) that a record failed to open or verify, and return the error to raise."""
    log.warning("a stored record failed its integrity check and is refused", extra={"record": record_key,
                                                                                    "reason": reason})
    return RecordCorrupt(f"record {record_key}: {reason}")


def new_grant_fields(
    *,
    keyring: KeyRing,
    record_key: str,
    grant_id: str,
    subject: str,
    client_id: str,
    scopes: Sequence[str],
    claims: Mapping[str, Any],
    upstream: UpstreamCredentials | None,
    now_ms: int,
) -> dict[str, str]:
    """The fields of a new grant record (``exp`` is added by the backend when it sets the deadline)."""
    envelope, up_exp = encrypt_upstream(keyring, record_key, upstream)
    identity = {"gid": grant_id, "sub": subject, "cid": client_id, "scopes": list(scopes)}
    return {
        "v": str(GRANT_FORMAT_VERSION),
        "gid": grant_id,
        "idn": keyring.encrypt(
            json.dumps(identity, separators=(",", ":")).encode("utf-8"), record_key=record_key + _IDENTITY_FIELD_AAD
        ),
        "gen": "1",
        "created": str(now_ms),
        "updated": str(now_ms),
        "claims": seal_claims(keyring, record_key, claims),
        "up": envelope,
        "up_exp": str(up_exp),
        "cl_exp": "0",
    }


def decode_grant(keyring: KeyRing, record_key: str, fields: Mapping[str, str]) -> Grant:
    """Turn a grant record back into a :class:`Grant`. Raises :class:`RecordCorrupt`."""
    if fields.get("v") != str(GRANT_FORMAT_VERSION):
        raise integrity_failure(record_key, f"unsupported grant format version {fields.get('v')!r}")
    try:
        envelope = fields.get("up", "")
        upstream = UpstreamCredentials.from_json(keyring.decrypt(envelope, record_key=record_key)) if envelope else None
        identity = json.loads(keyring.decrypt(fields["idn"], record_key=record_key + _IDENTITY_FIELD_AAD))
        claims = json.loads(keyring.decrypt(fields["claims"], record_key=record_key + _CLAIMS_FIELD_AAD))
        if not isinstance(identity, dict) or not isinstance(claims, dict):
            raise ValueError("identity and claims must be objects")
        scopes = identity["scopes"]
        if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
            raise ValueError("scopes must be a list of strings")
        if not isinstance(identity["sub"], str) or not isinstance(identity["cid"], str):
            raise ValueError("subject and client id must be strings")
        if identity["gid"] != fields["gid"]:
            raise ValueError("the identity belongs to another grant")
        return Grant(
            grant_id=identity["gid"],
            subject=identity["sub"],
            client_id=identity["cid"],
            scopes=tuple(scopes),
            generation=int(fields["gen"]),
            created_at=int(fields["created"]) / 1000,
            updated_at=int(fields["updated"]) / 1000,
            expires_at=int(fields["exp"]) / 1000,
            claims=claims,
            upstream=upstream,
        )
    except DecryptError as exc:
        raise integrity_failure(record_key, str(exc)) from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise integrity_failure(record_key, f"malformed ({type(exc).__name__})") from exc


def seal_payload(keyring: KeyRing, record_key: str, payload: Mapping[str, Any]) -> str:
    body = {"v": PAYLOAD_FORMAT_VERSION, "data": dict(payload)}
    return keyring.encrypt(json.dumps(body, separators=(",", ":")).encode("utf-8"), record_key=record_key)


def open_payload(keyring: KeyRing, record_key: str, envelope: str) -> dict[str, Any]:
    try:
        body = json.loads(keyring.decrypt(envelope, record_key=record_key))
    except DecryptError as exc:
        raise integrity_failure(record_key, str(exc)) from exc
    except ValueError as exc:
        raise RecordCorrupt(f"record {record_key} is not JSON") from exc
    if not isinstance(body, dict) or body.get("v") != PAYLOAD_FORMAT_VERSION or not isinstance(body.get("data"), dict):
        raise RecordCorrupt(f"record {record_key} has an unsupported payload format")
    data: dict[str, Any] = body["data"]
    return data


def seal_scopes(keyring: KeyRing, record_key: str, scopes: Sequence[str]) -> str:
    """A remembered consent: its scopes, sealed to the consent key (an edited record is refused)."""
    return seal_payload(keyring, record_key, {"scopes": sorted(set(scopes))})


def open_scopes(keyring: KeyRing, record_key: str, envelope: str) -> frozenset[str]:
    scopes = open_payload(keyring, record_key, envelope).get("scopes")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise integrity_failure(record_key, "a consent record without scopes")
    return frozenset(scopes)


def open_successor(keyring: KeyRing, record_key: str, envelope: str) -> TokenPair:
    try:
        return TokenPair.from_json(keyring.decrypt(envelope, record_key=record_key))
    except DecryptError as exc:
        raise RecordCorrupt(str(exc)) from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise RecordCorrupt(f"record {record_key} is malformed ({type(exc).__name__})") from exc


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def make_pair(
    access_token: str, refresh_token: str | None, now_ms: int, access_ttl_ms: int, refresh_ttl_ms: int
) -> TokenPair:
    return TokenPair(
        access_token=access_token,
        access_expires_at=(now_ms + access_ttl_ms) / 1000,
        refresh_token=refresh_token,
        refresh_expires_at=(now_ms + refresh_ttl_ms) / 1000 if refresh_token is not None else None,
    )


def scope_suffix(scopes: Sequence[str] | None) -> str:
    """What follows the grant id in a narrowed access token's record: ``:<scope> <scope>...`` (or nothing)."""
    return "" if scopes is None else ":" + " ".join(scopes)


def access_record(expires_ms: int, grant_id: str, scopes: Sequence[str] | None = None) -> str:
    """The value stored under an access token's hash: ``<expiry-ms>:<grant-id>``, plus ``:<scopes>`` when the
    token was issued for fewer scopes than its grant (a narrowed refresh, RFC 6749 §6). The suffix can only
    narrow: readers intersect it with the grant's sealed scopes, so editing it cannot add a scope."""
    return f"{expires_ms}:{grant_id}{scope_suffix(scopes)}"


@dataclass(frozen=True, slots=True)
class AccessTokenInfo:
    """A live client access token: its grant, its expiry (epoch seconds, for bounded caching) and, for a
    token from a narrowed refresh, the scopes it carries (``None``: all of the grant's)."""

    grant_id: str
    expires_at: float
    scopes: tuple[str, ...] | None = None


def check_access_record(value: str, grant_id: str, now_ms: int) -> AccessTokenInfo | None:
    """The token's grant and expiry if the record is live and names ``grant_id`` (compared in constant time)."""
    exp_text, _, rest = value.partition(":")
    stored_gid, narrowed, scope_text = rest.partition(":")
    if not exp_text.isdigit() or int(exp_text) <= now_ms:
        return None
    if not hmac.compare_digest(stored_gid.encode(), grant_id.encode()):
        return None
    scopes = tuple(s for s in scope_text.split(" ") if s) if narrowed else None
    return AccessTokenInfo(grant_id, int(exp_text) / 1000.0, scopes)


def seal_access_record(
    keyring: KeyRing, record_key: str, expires_ms: int, grant_id: str, scopes: Sequence[str] | None = None
) -> str:
    """The stored form of an access token's record: :func:`access_record` as an envelope bound to the token's
    key. Without the encryption key nobody can write a record that a lookup accepts (a forged token for
    someone's grant, a longer expiry, wider scopes)."""
    return keyring.encrypt(access_record(expires_ms, grant_id, scopes).encode("utf-8"), record_key=record_key)


def open_access_record(
    keyring: KeyRing, record_key: str, value: str, grant_id: str, now_ms: int
) -> AccessTokenInfo | None:
    """The live token's info, or ``None``; a record that does not open is logged and treated as unknown."""
    try:
        plain = keyring.decrypt(value, record_key=record_key).decode("utf-8")
    except (DecryptError, UnicodeDecodeError) as exc:
        integrity_failure(record_key, f"access token record: {type(exc).__name__}")
        return None
    return check_access_record(plain, grant_id, now_ms)


def seal_refresh_record(keyring: KeyRing, record_key: str, expires_ms: int, grant_id: str) -> str:
    """The ``seal`` field of a refresh token's record: its expiry and grant, bound to its key."""
    return keyring.encrypt(f"{expires_ms}:{grant_id}".encode(), record_key=record_key)


def refresh_record_genuine(
    keyring: KeyRing, record_key: str, seal: str | None, expires: str | None, grant_id: str
) -> bool:
    """True when the refresh token's record was written by us (its seal opens and names its expiry and grant)."""
    try:
        plain = keyring.decrypt(seal or "", record_key=record_key).decode("utf-8")
    except (DecryptError, UnicodeDecodeError) as exc:
        integrity_failure(record_key, f"refresh token record: {type(exc).__name__}")
        return False
    if not hmac.compare_digest(plain.encode(), f"{expires}:{grant_id}".encode()):
        integrity_failure(record_key, "refresh token record: seal does not match")
        return False
    return True


def check_token_for(grant_id: str, token: str, kind: TokenKind) -> None:
    """Programming-error guard: a token handed to the store must be one minted for this grant."""
    parsed = parse_client_token(token)
    if parsed is None or parsed.kind != kind or parsed.grant_id != grant_id:
        raise ValueError(f"not a {kind} token of this grant (mint it with mint_{kind}_token(grant_id))")


def check_ttl(name: str, seconds: float) -> int:
    """Seconds to milliseconds, refusing values that would make a record expire at once."""
    ms = to_ms(seconds)
    if ms < 1:
        raise ValueError(f"{name} must be positive")
    return ms


# ---------------------------------------------------------------------------------------------------------
# The protocol


class TokenStore(Protocol):
    """Persistence for the broker: grants, client tokens, locks, registrations, codes, pending logins.

    Every method may raise :class:`StoreUnavailable` (the backend is down or slow: answer 503 and keep
    state). Reads of a damaged record raise :class:`RecordCorrupt`. Durations are seconds unless the
    name says ``_ms``; times are epoch seconds.
    """

    async def ping(self) -> None:
        """Readiness: return when the backend answers, else raise :class:`StoreUnavailable`."""

    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    # --- grants (DESIGN §5, §7) ---

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

    # --- client tokens (DESIGN §2 opaque tokens, §8 rotation) ---

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

    # --- refresh lock (DESIGN §7.3) ---

    async def acquire_lock(self, grant_id: str, owner: str, ttl_ms: int) -> bool:
        """Take the grant's refresh lock for ``ttl_ms`` unless someone holds it."""

    async def release_lock(self, grant_id: str, owner: str) -> bool:
        """Release the lock only if ``owner`` still holds it."""

    # --- client registrations, authorization codes, pending logins, consent ---

    async def put_client(
        self, client_id: str, metadata: Mapping[str, Any], *, ttl: float | None = None, max_clients: int | None = None
    ) -> bool:
        """Store a client registration, sealed in an envelope (client secrets only as hashes). With
        ``max_clients``, a *new* client is refused (``False``) while that many live registrations exist; a
        known one is always rewritten (renewal). ``True`` when stored."""

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        """The registration, or ``None``; an edited record raises :class:`RecordCorrupt`."""

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
