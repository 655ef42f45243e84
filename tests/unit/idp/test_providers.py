"""Provider profiles: Google's access_type vs the offline_access scope; prompt=consent for the generic
profile (OIDC Core §11) and Google, never for Entra/Okta/Auth0/Keycloak; force_consent overrides."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.providers import PROVIDERS, detect_provider, offline_access_params


@pytest.mark.parametrize(
    ("issuer", "override", "expected"),
    [
        ("https://accounts.google.com", "auto", "google"),
        ("https://accounts.google.com/", "auto", "google"),
        ("https://ACCOUNTS.Google.com", "auto", "google"),
        ("accounts.google.com", "auto", "google"),  # the scheme-less iss Google also uses
        ("https://accounts.google.com.evil.example", "auto", "generic"),
        ("https://evil.example/accounts.google.com", "auto", "generic"),
        ("https://tenant.auth0.com/", "auto", "auth0"),
            ("https://tenant.eu.auth0.com/", "auto", "auth0"),
            ("https://auth0.com.evil.example/", "auto", "generic"),
            ("https://login.microsoftonline.com/tid/v2.0", "auto", "entra"),
            ("https://dev-123.okta.com/oauth2/default", "auto", "okta"),
            ("https://okta.com.evil.example", "auto", "generic"),
        ("https://keycloak.example.com/realms/main", "auto", "keycloak"),
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
        detect_provider("https://idp.example", "ping")


BASE = ["openid", "email", "profile"]
OFF = [*BASE, "offline_access"]


@pytest.mark.parametrize(
    ("provider", "scopes", "force_consent", "expected_scopes", "expected_params"),
    [
        # Google: access_type=offline, and prompt=consent (the refresh token comes only with a consent).
        ("google", BASE, None, BASE, {"access_type": "offline", "prompt": "consent"}),
        ("google", BASE, False, BASE, {"access_type": "offline"}),
        ("google", BASE, True, BASE, {"access_type": "offline", "prompt": "consent"}),
        # Google answers invalid_scope to offline_access: it is removed even when configured.
        ("google", OFF, None, BASE, {"access_type": "offline", "prompt": "consent"}),
        # Generic: OIDC Core §11: offline_access with prompt=consent unless told otherwise.
        ("generic", BASE, None, OFF, {"prompt": "consent"}),
        ("generic", BASE, False, OFF, {}),
        ("generic", BASE, True, OFF, {"prompt": "consent"}),
        ("generic", ["offline_access", "openid"], None, ["offline_access", "openid"], {"prompt": "consent"}),
        ("generic", ["openid", "openid", ""], None, ["openid", "offline_access"], {"prompt": "consent"}),
        ("generic", [], False, ["offline_access"], {}),
        # Entra, Okta, Auth0, Keycloak: the scope; no prompt (their consent rules grant offline access).
        ("entra", BASE, None, OFF, {}),
        ("okta", BASE, None, OFF, {}),
        ("auth0", BASE, None, OFF, {}),
        ("keycloak", BASE, None, OFF, {}),
        ("keycloak", BASE, True, OFF, {"prompt": "consent"}),
    ],
)
def test_offline_access_params(provider, scopes, force_consent, expected_scopes, expected_params):
    got_scopes, got_params = offline_access_params(provider, scopes, force_consent)
    assert got_scopes == expected_scopes
    assert got_params == expected_params
    assert ("access_type" in got_params) is (provider == "google")
    assert ("offline_access" in got_scopes) is (provider != "google")


@given(
    provider=st.sampled_from(PROVIDERS),
    scopes=st.lists(st.sampled_from(["openid", "email", "profile", "offline_access", "x", ""]), max_size=6),
    force=st.sampled_from([None, True, False]),
)
@settings(max_examples=60, deadline=None)
def test_every_profile_asks_for_offline_access_somehow(provider, scopes, force):
    got_scopes, got_params = offline_access_params(provider, scopes, force)
    assert len(got_scopes) == len(set(got_scopes)) and "" not in got_scopes
    assert "offline_access" in got_scopes or got_params.get("access_type") == "offline"
    if force is not None:
        assert ("prompt" in got_params) is force


def test_offline_access_params_does_not_mutate_its_input():
    scopes = [*BASE, "offline_access"]
    offline_access_params("google", scopes, True)
    assert scopes == [*BASE, "offline_access"]
