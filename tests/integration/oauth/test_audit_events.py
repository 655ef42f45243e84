"""The broker's audit events over plain HTTP: token (code and refresh), refresh reuse (family revoked), revoke,
and upstream refresh, each with who and what, and never a token or code."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.app import CREDENTIALS, STORE
from sidecar.crypto import KeyRing
from sidecar.store.base import UpstreamCredentials
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import Registered, basic, obtain_code, register, token
from tests.support.oauth_harness import Browser, FakeClock, running_sidecar
from tests.support.oidc import IdPFront


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_broker_events_and_no_secrets(idp_front: IdPFront, tmp_path: Path) -> None:
    clock = FakeClock()
    audit = tmp_path / "audit.log"
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="auditev", clock=clock)
    secrets: list[str] = []
    async with running_sidecar(idp_front, store=store, audit_log=str(audit)) as sidecar, Browser(
        idp_front, sidecar.url
    ) as browser, aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client: Registered = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)
        status, first, _ = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
            "redirect_uri": client.redirect_uri})  # fmt: skip
        assert status == 200
        refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        status, second, _ = await token(http, sidecar, client, refresh)
        assert status == 200
        clock.advance(31)  # past the replay grace: a reuse now revokes the family
        status, _, _ = await token(http, sidecar, client, refresh)
        assert status == 400
        code2 = await obtain_code(browser, sidecar, client.client_id)
        status, third, _ = await token(http, sidecar, client, {
            "grant_type": "authorization_code", "code": code2.code, "code_verifier": code2.verifier,
            "redirect_uri": client.redirect_uri})  # fmt: skip
        async with http.post(sidecar.url + "/oauth/revoke", data={"token": third["access_token"]},
                             headers=basic(client)) as r:  # fmt: skip
            assert r.status == 200
        # An upstream refresh, through the credential broker as the relay would ask for it.
        issued = await idp_front.obtain_tokens(sub="dave@example.com")
        grant = await sidecar.app[STORE].create_grant(
            subject="dave@example.com", client_id=client.client_id, scopes=["openid"], claims={"sub": "dave"},
            upstream=UpstreamCredentials(access_token=issued.access_token, refresh_token=issued.refresh_token,
                                         access_expires_at=time.time() - 10),
        )  # fmt: skip
        await sidecar.app[CREDENTIALS].current(grant.grant_id)
        secrets += [first["access_token"], first["refresh_token"], second["access_token"], code.code, code2.code,
                    third["access_token"], issued.access_token, issued.refresh_token or "-"]  # fmt: skip
    found = events(audit)
    kinds = [e["event"] for e in found]
    tokens = [e for e in found if e["event"] == "oauth.token"]
    assert [(e["grant_type"], e["outcome"]) for e in tokens] == [
        ("authorization_code", "ok"), ("refresh_token", "ok"), ("refresh_token", "invalid_grant"),
        ("authorization_code", "ok")]  # fmt: skip
    assert tokens[0]["client_id"] == client.client_id and tokens[0]["grant"]
    (reuse,) = [e for e in found if e["event"] == "oauth.refresh_reuse"]
    assert reuse["grant"] == tokens[0]["grant"] and reuse["outcome"] == "family_revoked" and reuse["sub"]
    (revoke,) = [e for e in found if e["event"] == "oauth.revoke"]
    assert revoke["outcome"] == "access_revoked" and revoke["client_id"] == client.client_id
    (up,) = [e for e in found if e["event"] == "upstream.refresh"]
    assert (up["grant"], up["sub"], up["outcome"]) == (grant.grant_id, "dave@example.com", "ok")
    assert kinds.count("oauth.login") == 2 and kinds.count("oauth.consent") >= 1
    text = audit.read_text()
    for secret in secrets:
        assert secret not in text
