"""The store's records and client-token ids: what a backend keeps and hands back, with its errors.

Pure data and pure functions: the formats (versioned), the records (:class:`Grant`,
:class:`UpstreamCredentials`, :class:`TokenPair`, :class:`AccessTokenInfo`, :class:`ParsedToken`), the
rotation outcome, the store's errors, and the opaque client tokens ``<prefix>_<grant-id>.<secret>``
(DESIGN §2). How records are sealed into Redis-shaped fields is :mod:`sidecar.store.codecs`; key names are
:mod:`sidecar.store.layout`; the protocols are :mod:`sidecar.store.protocols`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

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


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class AccessTokenInfo:
    """A live client access token: its grant, its expiry (epoch seconds, for bounded caching) and, for a
    token from a narrowed refresh, the scopes it carries (``None``: all of the grant's)."""

    grant_id: str
    expires_at: float
    scopes: tuple[str, ...] | None = None
