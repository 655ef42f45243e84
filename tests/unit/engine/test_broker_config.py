"""Broker-mode configuration rules that check-config enforces."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("public_url", "ok"),
    [
        ("https://mcp.example.com", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://mcp.example.com", False),
    ],
)
def test_broker_mode_needs_https_public_url_except_on_loopback(public_url: str, ok: bool) -> None:
    from sidecar.config import ConfigError, load_settings

    flags = {
        "mode": "broker",
        "upstream": "http://127.0.0.1:8000",
        "public_url": public_url,
        "idp_issuer": "https://idp.example.com",
        "idp_client_id": "c",
        "idp_client_secret": "s",
    }
    if ok:
        load_settings(None, {}, flags)
    else:
        with pytest.raises(ConfigError) as err:
            load_settings(None, {}, flags)
        assert [p.key for p in err.value.problems] == ["public_url"]
        assert "https" in err.value.problems[0].message

