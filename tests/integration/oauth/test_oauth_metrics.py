"""OAuth metrics by outcome: what an operator's dashboard shows after registrations, a login with consent, token
grants, a refresh retried within the grace and one reused after it (theft), and a bad request or two."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sidecar.app import METRICS
from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import Registered, obtain_code, token
from tests.support.oauth_harness import Browser, FakeClock, Sidecar


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="metricstest", clock=clock)


def value(sidecar: Sidecar, name: str, **labels: str) -> float:
    found = sidecar.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_oauth_outcomes_are_counted(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser, client: Registered, clock: FakeClock
) -> None:
    assert value(sidecar, "mcp_sidecar_oauth_registrations_total", outcome="registered") == 1
    async with http.post(sidecar.url + "/oauth/register", json={"redirect_uris": []}) as resp:
        assert resp.status == 400
    assert value(sidecar, "mcp_sidecar_oauth_registrations_total", outcome="invalid_redirect_uri") == 1

    code = await obtain_code(browser, sidecar, client.client_id)
    assert value(sidecar, "mcp_sidecar_oauth_consents_total", outcome="approved") == 1
    assert value(sidecar, "mcp_sidecar_oauth_logins_total", outcome="completed") == 1

    form: dict[str, Any] = {"grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
                            "redirect_uri": client.redirect_uri}
    status, first, _ = await token(http, sidecar, client, form)
    assert status == 200
    grants = "mcp_sidecar_oauth_token_grants_total"
    assert value(sidecar, grants, grant_type="authorization_code", outcome="issued") == 1

    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    assert (await token(http, sidecar, client, refresh))[0] == 200
    assert (await token(http, sidecar, client, refresh))[0] == 200  # retried within the grace
    clock.advance(31)
    assert (await token(http, sidecar, client, refresh))[0] == 400  # reused after it: the family is revoked
    assert value(sidecar, grants, grant_type="refresh_token", outcome="issued") == 2
    assert value(sidecar, grants, grant_type="refresh_token", outcome="invalid_grant") == 1
    assert value(sidecar, "mcp_sidecar_oauth_refresh_reuse_total", outcome="replayed") == 1
    assert value(sidecar, "mcp_sidecar_oauth_refresh_reuse_total", outcome="revoked") == 1
    status, _, _ = await token(http, sidecar, client, form)  # the code again: refused
    assert status == 400
    assert value(sidecar, grants, grant_type="authorization_code", outcome="invalid_grant") == 1
    status, _, _ = await token(http, sidecar, client, {"grant_type": "password"})
    assert status == 400
    assert value(sidecar, grants, grant_type="other", outcome="unsupported_grant_type") == 1
