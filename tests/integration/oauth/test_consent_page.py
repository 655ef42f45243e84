"""The consent page people see (issue 13): scope descriptions people understand (configurable, escaped),
one primary Allow button, and the service's ``display_name``."""

from __future__ import annotations

import aiohttp

from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import authorize_url, register
from tests.support.oauth_harness import Browser, running_sidecar
from tests.support.oidc import IdPFront


async def test_consent_page_speaks_plainly(idp_front: IdPFront) -> None:
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="page")
    async with running_sidecar(
        idp_front, store=store, display_name="Acme <Tickets>",
        scope_descriptions={"tickets:write": "Create & edit your tickets", "email": "Read your e-mail address"},
        required_scopes=["tickets:write"],
    ) as sidecar, aiohttp.ClientSession() as http, Browser(idp_front, sidecar.url) as browser:
        client = await register(http, sidecar)
        scope = "openid email offline_access tickets:write"
        step = await browser.get(authorize_url(sidecar, client.client_id, scope=scope))
        page = step.text
    assert step.status == 200
    assert "Acme &lt;Tickets&gt;" in page  # display_name, escaped
    assert "Confirm who you are" in page  # a built-in description
    assert "Read your e-mail address" in page  # configured, replacing the built-in
    assert "Create &amp; edit your tickets" in page  # configured, escaped
    assert "Stay connected when you are not using it" in page  # offline_access in words, not only its code
    assert page.count("class=primary") == 1  # one primary button ...
    allow = page.index("value=approve")
    assert page.index("class=primary") > allow and page.index("class=primary") < page.index("value=deny")
