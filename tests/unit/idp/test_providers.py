"""Provider profiles (seed 000): Google's access_type vs the offline_access scope, prompt=consent on demand."""

from __future__ import annotations

import pytest

from sidecar.providers import detect_provider, offline_access_params


@pytest.mark.parametrize(
    ("issuer", "override", "expected"),
    [
        ("https://accounts.google.com", "auto", "google"),
        ("https://accounts.google.com/", "auto", "google"),
        ("https://ACCOUNTS.Google.com", "auto", "google"),
        ("accounts.google.com", "auto", "google"),  # the scheme-less iss Google also uses
        ("https://accounts.google.com.evil.example", "auto", "generic"),
        ("https://evil.example/accounts.google.com", "auto", "generic"),
        ("https://tenant.auth0.com/", "auto", "generic"),
        ("https://keycloak.example.com/realms/main", "auto", "generic"),
        ("http://127.0.0.1:8080", "auto", "generic"),
        (None, "auto", "generic"),
        ("", "auto", "generic"),
        ("https://tenant.auth0.com/", "google", "google"),  # the operator's override wins
        ("https://accounts.google.com", "generic", "generic"),
    ],
)
def test_detect_provider(issuer, override, expected):
    assert detect_provider(issuer, override) == expected


def test_detect_provider_rejects_unknown_override():
    with pytest.raises(ValueError, match="idp_provider"):
        detect_provider("https://idp.example", "okta")


BASE = ["openid", "email", "profile"]


@pytest.mark.parametrize(
    ("provider", "scopes", "force_consent", "expected_scopes", "expected_params"),
    [
        ("google", BASE, False, BASE, {"access_type": "offline"}),
        ("google", BASE, True, BASE, {"access_type": "offline", "prompt": "consent"}),
        # Google answers invalid_scope to offline_access: it is removed even when configured.
        ("google", [*BASE, "offline_access"], False, BASE, {"access_type": "offline"}),
        ("generic", BASE, False, [*BASE, "offline_access"], {}),
        ("generic", BASE, True, [*BASE, "offline_access"], {"prompt": "consent"}),
        ("generic", ["offline_access", "openid"], False, ["offline_access", "openid"], {}),
        ("generic", ["openid", "openid", ""], False, ["openid", "offline_access"], {}),
        ("generic", [], False, ["offline_access"], {}),
    ],
)
def test_offline_access_params(provider, scopes, force_consent, expected_scopes, expected_params):
    got_scopes, got_params = offline_access_params(provider, scopes, force_consent)
    assert got_scopes == expected_scopes
    assert got_params == expected_params
    assert ("access_type" in got_params) is (provider == "google")
    assert ("offline_access" in got_scopes) is (provider == "generic")


def test_offline_access_params_does_not_mutate_its_input():
    scopes = [*BASE, "offline_access"]
    offline_access_params("google", scopes, True)
    assert scopes == [*BASE, "offline_access"]
