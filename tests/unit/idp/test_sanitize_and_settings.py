"""sanitize_description() and IdPClient.from_settings()."""

from __future__ import annotations

import aiohttp
import pytest

from sidecar.config import Settings
from sidecar.idp import MAX_DESCRIPTION_BYTES, IdPClient, sanitize_description


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Token has been expired or revoked.", "Token has been expired or revoked."),
        (None, None),
        (42, None),
        ({"a": 1}, None),
        ("", None),
        ("\x00\x01\x7f", None),
        ("line one\nline two\r\n\tend", "line one line two end"),
        ("\x1b[2J\x1b[31mred", "[2J[31mred"),
        ("a\u202eb\u200bc", "abc"),  # bidi override and zero-width space
        ("a\u2028b\u2029c", "a b c"),
        ("a\x85b\x9bc", "a bc"),  # C1 controls: NEL is whitespace, CSI is not
        ("  padded  ", "padded"),
        ("x" * 500, "x" * MAX_DESCRIPTION_BYTES),
        ("é" * 100, "é" * 60),  # 2-byte characters: 60 of them fill 120 bytes
        ("a" * 119 + "é", "a" * 119),  # never half a character
        ("a" * 118 + "€", "a" * 118),  # a 3-byte character that does not fit
        ("日本語のエラー", "日本語のエラー"),
    ],
)
def test_sanitize_description(given, expected):
    assert sanitize_description(given) == expected


def test_sanitized_text_fits_the_byte_budget_for_any_mix():
    text = "".join(chr(c) for c in range(0x20, 0x3000, 7)) * 3
    result = sanitize_description(text)
    assert result is not None
    assert len(result.encode("utf-8")) <= MAX_DESCRIPTION_BYTES
    result.encode("utf-8").decode("utf-8")


async def test_from_settings_uses_the_idp_settings():
    settings = Settings.model_validate(
        {
            "mode": "broker",
            "idp_issuer": "https://idp.example.com",
            "idp_client_id": "cid",
            "idp_client_secret": "very-secret",
            "idp_token_auth_method": "client_secret_post",
            "idp_timeout_seconds": 3,
        }
    )
    async with aiohttp.ClientSession() as session:
        client = IdPClient.from_settings(settings, session)
    assert client.issuer == "https://idp.example.com"
    assert client.client_id == "cid"
    assert "very-secret" not in repr(client)
    assert "client_secret_post" in repr(client)


async def test_from_settings_needs_the_broker_keys():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="idp_issuer"):
            IdPClient.from_settings(Settings(), session)
