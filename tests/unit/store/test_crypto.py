"""AES-256-GCM envelopes and the key ring (DESIGN §6)."""

from __future__ import annotations

import base64
import secrets

import pytest
from pydantic import SecretStr

from sidecar.crypto import ENVELOPE_VERSION, NONCE_BYTES, DecryptError, KeyRing, associated_data


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


K1 = secrets.token_bytes(32)
K2 = secrets.token_bytes(32)
SETTING = f"k1:{b64(K1)},k2:{b64(K2)}"


def test_round_trip_and_envelope_shape() -> None:
    ring = KeyRing.from_setting(SETTING)
    envelope = ring.encrypt(b"hello", record_key="mcpsc:{g}:grant")
    version, kid, body = envelope.split(".")
    assert (version, kid) == (ENVELOPE_VERSION, "k1")
    assert "=" not in body
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == NONCE_BYTES + 5 + 16
    assert ring.decrypt(envelope, record_key="mcpsc:{g}:grant") == b"hello"


def test_nonce_is_fresh_each_time() -> None:
    ring = KeyRing.from_setting(SETTING)
    envelopes = {ring.encrypt(b"same", record_key="k") for _ in range(100)}
    assert len(envelopes) == 100


def test_ciphertext_is_bound_to_its_record_key() -> None:
    ring = KeyRing.from_setting(SETTING)
    envelope = ring.encrypt(b"upstream tokens of alice", record_key="mcpsc:{alice}:grant")
    with pytest.raises(DecryptError, match="fails authentication"):
        ring.decrypt(envelope, record_key="mcpsc:{mallory}:grant")


def test_kid_and_version_are_authenticated() -> None:
    ring = KeyRing([("a", K1), ("b", K1)])  # same key bytes under two ids
    envelope = ring.encrypt(b"x", record_key="r")
    relabelled = envelope.replace("v1.a.", "v1.b.", 1)
    with pytest.raises(DecryptError):
        ring.decrypt(relabelled, record_key="r")


def test_associated_data_is_unambiguous() -> None:
    assert associated_data("a", "v1", "k") != associated_data("a\x00v1", "", "k")


def test_first_key_encrypts_all_keys_decrypt() -> None:
    old = KeyRing.from_setting(f"k1:{b64(K1)}")
    envelope = old.encrypt(b"written before rotation", record_key="r")
    rotated = KeyRing.from_setting(SecretStr(f"k3:{b64(secrets.token_bytes(32))},k1:{b64(K1)}"))
    assert rotated.primary_kid == "k3"
    assert rotated.kids == ("k3", "k1")
    assert rotated.decrypt(envelope, record_key="r") == b"written before rotation"
    assert rotated.encrypt(b"new", record_key="r").startswith("v1.k3.")


def test_retired_key_is_reported_by_id() -> None:
    envelope = KeyRing.from_setting(f"gone:{b64(K1)}").encrypt(b"x", record_key="r")
    with pytest.raises(DecryptError, match=r"'gone'.*not in the key ring"):
        KeyRing.from_setting(SETTING).decrypt(envelope, record_key="r")


def test_same_kid_with_another_key_fails() -> None:
    envelope = KeyRing([("k1", K1)]).encrypt(b"x", record_key="r")
    with pytest.raises(DecryptError):
        KeyRing([("k1", K2)]).decrypt(envelope, record_key="r")


@pytest.mark.parametrize(
    "envelope",
    ["", "v1", "v1.k1", "v2.k1.AAAA", "v1.k1.%%%", "v1.k1.AAAA", "v1.k1." + b64(b"\x00" * 40)],
)
def test_malformed_envelopes(envelope: str) -> None:
    with pytest.raises(DecryptError):
        KeyRing.from_setting(SETTING).decrypt(envelope, record_key="r")


def test_tampering_is_detected() -> None:
    ring = KeyRing.from_setting(SETTING)
    envelope = ring.encrypt(b"payload", record_key="r")
    head, body = envelope.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 1
    with pytest.raises(DecryptError):
        ring.decrypt(f"{head}.{b64(bytes(raw))}", record_key="r")


def test_ephemeral_ring() -> None:
    ring = KeyRing.ephemeral()
    assert ring.is_ephemeral and not KeyRing.from_setting(SETTING).is_ephemeral
    assert ring.decrypt(ring.encrypt(b"x", record_key="r"), record_key="r") == b"x"
    with pytest.raises(DecryptError):
        KeyRing.ephemeral().decrypt(ring.encrypt(b"x", record_key="r"), record_key="r")


def test_repr_and_errors_hide_key_material() -> None:
    ring = KeyRing.from_setting(SETTING)
    for text in (repr(ring), str(ring)):
        assert "'***'" in text and "k1" in text
        assert b64(K1) not in text and b64(K2) not in text and repr(K1) not in text
    envelope = ring.encrypt(b"TOP-SECRET-PLAINTEXT", record_key="r")
    with pytest.raises(DecryptError) as info:
        ring.decrypt(envelope, record_key="other")
    assert "TOP-SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "setting",
    ["", "k1", f"k1:{b64(b'short')}", f"k1:{b64(K1)},k1:{b64(K2)}", "k1:not base64!!", f"bad kid:{b64(K1)}"],
)
def test_bad_settings_are_refused(setting: str) -> None:
    with pytest.raises(ValueError):
        KeyRing.from_setting(setting)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        KeyRing([])
    with pytest.raises(ValueError):
        KeyRing([("a.b", K1)])
    with pytest.raises(ValueError):
        KeyRing([("a", b"x" * 16)])
