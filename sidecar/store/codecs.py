"""Record codecs shared by the backends: how records become sealed fields and back.

The grant record is a flat string map (a Redis hash); every field that grants identity or access is an
AES-256-GCM envelope whose associated data is the record's key (plus a field suffix), so an edited or moved
field fails to open: :class:`~sidecar.store.records.RecordCorrupt`, logged once by
:func:`integrity_failure`, never trusted.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from sidecar.crypto import DecryptError, KeyRing
from sidecar.store.records import (
    GRANT_FORMAT_VERSION,
    MIN_RECORD_TTL_MS,
    PAYLOAD_FORMAT_VERSION,
    AccessTokenInfo,
    Grant,
    RecordCorrupt,
    TokenKind,
    TokenPair,
    UpstreamCredentials,
    parse_client_token,
)

log = logging.getLogger("sidecar.store")

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
    log.warning(
        "a stored record failed its integrity check and is refused", extra={"record": record_key, "reason": reason}
    )
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
