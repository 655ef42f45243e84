"""Secrets at rest: AES-256-GCM envelopes under a key ring (DESIGN §6).

What this module implements:

* NIST SP 800-38D AES-GCM with a 256-bit key (``cryptography``'s ``AESGCM``) and a fresh 96-bit random
  nonce per encryption (SP 800-38D §8.2.2, RBG-based construction; with random nonces a key must not
  be used for more than 2^32 encryptions, far beyond one deployment's credential writes).
* Associated data binds each ciphertext to *where* it is stored: the record's key, the envelope format
  version and the key id. A ciphertext copied into another record (another grant, another token) fails
  authentication, so a store compromise cannot move one user's upstream tokens into another's grant.
* The envelope is ``v1.<kid>.<base64url(nonce || ciphertext+tag)>`` (no padding): versioned so a later
  format can be read next to this one, and naming the key so rotation needs no trial decryption.
* A :class:`KeyRing` built from the ``encryption_keys`` setting (``kid:base64key,…``, parsed by
  :func:`sidecar.config.parse_key_ring`): the first key encrypts, every key decrypts. Rotation is "put a
  new key first, keep the old one until every record has been rewritten or has expired".
* :meth:`KeyRing.ephemeral` makes a random in-process key for the memory store; the caller logs that
  anything encrypted with it dies with the process.

Secrets never print: ``repr``/``str`` of a key ring show key ids and ``'***'``, never key bytes, and
:class:`DecryptError` messages name the key id and the record key, never plaintext or key material.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from sidecar.config import parse_key_ring

ENVELOPE_VERSION: Final = "v1"
NONCE_BYTES: Final = 12  # 96 bits: the GCM nonce length SP 800-38D §5.2.1.1 recommends
KEY_BYTES: Final = 32  # AES-256
TAG_BYTES: Final = 16  # GCM's full 128-bit tag (cryptography's default)
EPHEMERAL_KID: Final = "ephemeral"

# Separates the parts of the associated data; it cannot occur in a Redis key we build, a version or a kid,
# so ("a\x00b", "c") and ("a", "b\x00c") can never produce the same associated data.
_AAD_SEPARATOR: Final = b"\x00"


class DecryptError(Exception):
    """An envelope could not be opened: malformed, unknown key id, or it fails authentication.

    Authentication fails when the ciphertext was altered, was written for another record key, or was
    encrypted with a different key under the same id. The message never carries secrets.
    """


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def associated_data(record_key: str, version: str, kid: str) -> bytes:
    """The AEAD associated data for one envelope: record key, format version and key id."""
    return _AAD_SEPARATOR.join((record_key.encode("utf-8"), version.encode("ascii"), kid.encode("ascii")))


class KeyRing:
    """An ordered set of AES-256 keys: the first encrypts, all decrypt.

    Build one with :meth:`from_setting` (the ``encryption_keys`` setting) or :meth:`ephemeral`.
    """

    __slots__ = ("_ciphers", "_ephemeral", "_primary")

    def __init__(self, keys: Sequence[tuple[str, bytes]], *, ephemeral: bool = False) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        for kid, raw in keys:
            if len(raw) != KEY_BYTES:
                raise ValueError(f"key '{kid}' must be {KEY_BYTES} bytes (AES-256), not {len(raw)}")
            if kid in ciphers:
                raise ValueError(f"key id '{kid}' appears twice")
            if "." in kid or "\x00" in kid or not kid.isascii():
                raise ValueError(f"key id '{kid}' must be ASCII without '.'")
            ciphers[kid] = AESGCM(raw)
        self._ciphers = ciphers
        self._primary = keys[0][0]
        self._ephemeral = ephemeral

    @classmethod
    def from_setting(cls, value: str | SecretStr) -> KeyRing:
        """Parse ``kid:base64key,…`` (the ``encryption_keys`` setting). Raises ``ValueError`` with a reason."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        return cls(parse_key_ring(text))

    @classmethod
    def ephemeral(cls) -> KeyRing:
        """A random key that lives only in this process (for the memory store; the caller logs it)."""
        return cls([(EPHEMERAL_KID, secrets.token_bytes(KEY_BYTES))], ephemeral=True)

    @property
    def primary_kid(self) -> str:
        """The id of the key new envelopes are encrypted with."""
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        """All key ids, the encrypting one first."""
        return tuple(self._ciphers)

    @property
    def is_ephemeral(self) -> bool:
        return self._ephemeral

    def encrypt(self, plaintext: bytes, *, record_key: str) -> str:
        """Seal ``plaintext`` for the record stored under ``record_key``; returns the envelope text."""
        kid = self._primary
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, plaintext, associated_data(record_key, ENVELOPE_VERSION, kid))
        return f"{ENVELOPE_VERSION}.{kid}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, envelope: str, *, record_key: str) -> bytes:
        """Open an envelope written for ``record_key``. Raises :class:`DecryptError` on any failure."""
        version, sep1, rest = envelope.partition(".")
        kid, sep2, body = rest.partition(".")
        if not (sep1 and sep2) or version != ENVELOPE_VERSION:
            raise DecryptError(f"not a {ENVELOPE_VERSION} envelope (record {record_key})")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptError(
                f"envelope of record {record_key} uses key id {kid!r}, which is not in the key ring "
                f"({', '.join(self.kids)}): keep retired keys in encryption_keys until their records expire"
            )
        try:
            raw = _b64url_decode(body)
        except (binascii.Error, ValueError) as exc:
            raise DecryptError(f"envelope of record {record_key} is not valid base64url") from exc
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise DecryptError(f"envelope of record {record_key} is too short")
        try:
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], associated_data(record_key, version, kid))
        except InvalidTag:
            # No detail on purpose: altered, moved to another record, or a different key under this id.
            raise DecryptError(f"envelope of record {record_key} fails authentication (key id {kid!r})") from None

    def __repr__(self) -> str:
        kind = ", ephemeral" if self._ephemeral else ""
        return f"KeyRing(kids={list(self.kids)!r}, keys='***'{kind})"

    __str__ = __repr__
