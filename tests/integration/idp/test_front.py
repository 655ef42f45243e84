"""The IdP front itself: the strictness other test folders rely on."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from sidecar.config import Settings
from tests.support.oidc import IdPFront

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:authlib")


async def test_both_authentication_methods_in_one_request_are_refused(http: aiohttp.ClientSession, idp_front):
    basic = base64.b64encode(f"{idp_front.client_id}:x".encode()).decode()
    form = {
        "grant_type": "refresh_token",
        "refresh_token": "r",
        "client_id": idp_front.client_id,
        "client_secret": idp_front.client_secret,
    }
    async with http.post(idp_front.token_endpoint, data=form, headers={"Authorization": "Basic " + basic}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    assert idp_front.token_requests[-1].auth_method == "both"


async def test_pkce_can_be_required(idp_front: IdPFront):
    idp_front.require_pkce = True
    with pytest.raises(AssertionError, match="invalid_grant"):
        await idp_front.obtain_tokens(use_pkce=False)
    assert (await idp_front.obtain_tokens(use_pkce=True)).refresh_token


async def test_lifetime_of_code_exchange_tokens_can_be_shortened(idp_front: IdPFront):
    idp_front.access_token_lifetime = 30
    tokens = await idp_front.obtain_tokens()
    assert tokens.expires_in == 30


async def test_authorize_requests_are_recorded(idp_front: IdPFront):
    url = idp_front.build_authorize_url(extra={"access_type": "offline", "prompt": "consent"})
    location = await idp_front.authorize(url, sub="bob@example.com")
    assert "code=" in location
    assert idp_front.authorize_requests[-1]["access_type"] == "offline"
    assert idp_front.authorize_requests[-1]["prompt"] == "consent"


async def test_sidecar_settings_point_at_the_front(idp_front: IdPFront):
    settings = Settings.model_validate({"mode": "broker", **idp_front.sidecar_settings()})
    assert settings.idp_issuer == idp_front.issuer
    assert settings.idp_client_secret is not None
    assert settings.idp_client_secret.get_secret_value() == idp_front.client_secret
