"""The upstream authorization request the sidecar sends the browser to, per provider profile:
Google gets ``access_type=offline`` and never ``offline_access``; others get ``offline_access``;
``prompt=consent`` for the generic profile and Google unless ``force_consent: false``. Table-driven, through
the real consent step."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import authorize_url, register
from tests.support.oauth_harness import Browser, query_of, running_sidecar
from tests.support.oidc import IdPFront

CASES: list[tuple[str, dict[str, Any], dict[str, str | None]]] = [
    ("generic", {}, {"scope": "openid email profile offline_access", "access_type": None, "prompt": "consent"}),
    ("generic, consent off", {"force_consent": False},
     {"scope": "openid email profile offline_access", "access_type": None, "prompt": None}),
    ("google", {"idp_provider": "google"},
     {"scope": "openid email profile", "access_type": "offline", "prompt": "consent"}),
    ("google, consent off", {"idp_provider": "google", "force_consent": False},
     {"scope": "openid email profile", "access_type": "offline", "prompt": None}),
    ("google, offline_access configured anyway", {"idp_provider": "google", "idp_scopes": ["openid", "offline_access"]},
     {"scope": "openid", "access_type": "offline", "prompt": "consent"}),
    ("keycloak", {"idp_provider": "keycloak"},
     {"scope": "openid email profile offline_access", "access_type": None, "prompt": None}),
    ("generic, offline_access configured", {"idp_scopes": ["openid", "offline_access", "email"]},
     {"scope": "openid offline_access email", "access_type": None, "prompt": "consent"}),
]


@pytest.mark.parametrize(("name", "settings", "expected"), CASES, ids=[c[0] for c in CASES])
async def test_upstream_authorize_url(idp_front: IdPFront, name: str, settings: dict[str, Any],
                                      expected: dict[str, str | None]) -> None:
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="up")
    async with running_sidecar(idp_front, store=store, **settings) as sidecar, aiohttp.ClientSession() as http, \
            Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        # The client's own prompt=consent is about our consent page, never forwarded upstream.
        form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id, prompt="consent")))
        step = await browser.answer(form)
        assert step.status == 303 and step.location.startswith(idp_front.authorization_endpoint + "?")
        params = query_of(step.location)
        for key, value in expected.items():
            assert params.get(key) == value, (key, params)
        assert params["client_id"] == idp_front.client_id
        assert params["redirect_uri"] == sidecar.url + "/oauth/callback"
        assert params["response_type"] == "code" and params["code_challenge_method"] == "S256"
        assert len(params["state"]) >= 43 and len(params["nonce"]) >= 43
        # ... and the login completes with those parameters.
        callback = await idp_front.authorize(step.location)
        final = await browser.get(callback)
        assert final.status == 302 and "code" in query_of(final.location)
