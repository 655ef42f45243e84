"""``client_token: id_token`` (seed 000): the client's bearer is the upstream ID token; at ``/token`` a
near-expired one (< ``id_token_refresh_threshold_seconds`` left) is refreshed first, soft-failing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
import pytest_asyncio

from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import obtain_code, register, token
from tests.support.oauth_harness import Browser, Sidecar, running_sidecar
from tests.support.oidc import IdPFront


@pytest_asyncio.fixture
async def sidecar(idp_front: IdPFront) -> AsyncIterator[Sidecar]:
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="idtok")
    async with running_sidecar(idp_front, store=store, client_token="id_token") as sc:
        yield sc


async def login_and_redeem(idp_front: IdPFront, sidecar: Sidecar) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)
        status, body, headers = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
            "redirect_uri": client.redirect_uri})
        assert headers["Cache-Control"] == "no-store"
        return status, body


def exp_of(id_token: object) -> int:
    assert isinstance(id_token, str)
    return int(jwt.decode(id_token, options={"verify_signature": False})["exp"])


async def test_near_expired_id_token_is_refreshed(idp_front: IdPFront, sidecar: Sidecar) -> None:
    idp_front.id_token_lifetime = 120  # Google's silent SSO: an ID token with two minutes left
    idp_front.refreshed_id_token_lifetime = 3600
    status, body = await login_and_redeem(idp_front, sidecar)
    assert status == 200
    assert idp_front.refresh_calls == 1
    assert 3000 < int(str(body["expires_in"])) <= 3600
    assert "refresh_token" not in body  # seed 000: no downstream refresh in this mode
    assert int(str(body["expires_in"])) <= exp_of(body["access_token"]) - time.time() + 1


async def test_fresh_id_token_is_not_refreshed(idp_front: IdPFront, sidecar: Sidecar) -> None:
    idp_front.id_token_lifetime = 57 * 60
    status, body = await login_and_redeem(idp_front, sidecar)
    assert status == 200 and idp_front.refresh_calls == 0
    assert 3300 < int(str(body["expires_in"])) <= 57 * 60


@pytest.mark.parametrize("failure", ["500", "invalid_grant", "no_id_token"])
async def test_refresh_failure_soft_fails_to_the_original(idp_front: IdPFront, sidecar: Sidecar,
                                                          failure: str, caplog: pytest.LogCaptureFixture) -> None:
    idp_front.id_token_lifetime = 120
    if failure == "no_id_token":
        idp_front.id_token_on_refresh = False  # a refresh answer with an access token only
    status, body = await _login_then_fail(idp_front, sidecar, failure)
    assert status == 200  # seed 000: /token never breaks because the refresh did
    assert 0 < int(str(body["expires_in"])) <= 120  # the original, with its real remaining life
    if failure == "invalid_grant":
        assert "Token has been expired or revoked" in caplog.text  # sanitized (CR/LF gone), logged


async def _login_then_fail(idp_front: IdPFront, sidecar: Sidecar, failure: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)  # the code exchange happened here
        if failure == "500":
            idp_front.forced_token_error = (500, {"error": "server_error"})
        elif failure == "invalid_grant":
            idp_front.forced_token_error = (
                400, {"error": "invalid_grant", "error_description": "Token has been expired\r\nor revoked"})
        status, body, _ = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
            "redirect_uri": client.redirect_uri})
        return status, body


async def test_no_refresh_without_an_upstream_refresh_token(idp_front: IdPFront, sidecar: Sidecar,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    idp_front.id_token_lifetime = 120
    original = idp_front._issue_refresh_token
    monkeypatch.setattr(idp_front, "_issue_refresh_token", lambda family: None)
    status, body = await login_and_redeem(idp_front, sidecar)
    monkeypatch.setattr(idp_front, "_issue_refresh_token", original)
    assert status == 200 and idp_front.refresh_calls == 0
    assert int(str(body["expires_in"])) <= 120
