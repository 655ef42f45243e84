"""The consent page and its remembered decisions (issue 12, items 2 and 3).

* A remembered decision covers one client *and* one redirect URI (port-free on loopback) *and* the scopes
  it was given for: a link with another of the client's redirect URIs, or more scopes, shows the page again.
* The page sends ``Referrer-Policy: same-origin``, so the genuine POST carries our origin and ``Origin: null``
  (what an attacker's sandboxed page sends) is refused.
* ``/oauth/authorize`` reached under another host than the issuer's goes to the issuer's host first.
"""

from __future__ import annotations

import json

import aiohttp
import yarl

from tests.integration.oauth.flow import Registered, authorize_url, obtain_code, register
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, Sidecar
from tests.support.oidc import IdPFront


def _is_consent_page(step_status: int, text: str) -> bool:
    return step_status == 200 and "consent_id" in text


async def test_remembered_consent_is_per_redirect_uri(
    http: aiohttp.ClientSession, sidecar: Sidecar, browser: Browser
) -> None:
    other_uri = "https://app.example.com/cb"
    client = await register(http, sidecar, redirect_uris=[DEFAULT_REDIRECT_URI, other_uri])
    await obtain_code(browser, sidecar, client.client_id)
    assert browser.consent_pages == 1
    # The same loopback URI on another port is the same redirect target: remembered.
    await obtain_code(browser, sidecar, client.client_id, redirect_uri="http://127.0.0.1:40000/callback")
    assert browser.consent_pages == 1
    # Another registered redirect URI: the person must be asked again.
    step = await browser.get(authorize_url(sidecar, client.client_id, redirect_uri=other_uri))
    assert _is_consent_page(step.status, step.text), (step.status, step.headers.get("Location"))
    assert other_uri in step.text


async def test_remembered_consent_covers_only_the_scopes_given(
    sidecar: Sidecar, browser: Browser, client: Registered
) -> None:
    await obtain_code(browser, sidecar, client.client_id, scope="openid")
    await obtain_code(browser, sidecar, client.client_id, scope="openid")
    assert browser.consent_pages == 1
    step = await browser.get(authorize_url(sidecar, client.client_id, scope="openid email"))
    assert _is_consent_page(step.status, step.text)


async def test_consent_page_keeps_its_origin_on_its_own_post(
    sidecar: Sidecar, browser: Browser, client: Registered
) -> None:
    step = await browser.get(authorize_url(sidecar, client.client_id))
    assert step.headers["Referrer-Policy"] in ("same-origin", "strict-origin")


async def test_origin_null_is_refused_on_the_consent_post(
    sidecar: Sidecar, browser: Browser, client: Registered, idp_front: IdPFront
) -> None:
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    step = await browser.request("POST", form.action, data={**form.fields, "decision": "approve"},
                                 headers={"Origin": "null", "Accept": "application/json"})
    assert (step.status, json.loads(step.text)["error"]) == (403, "access_denied")
    assert idp_front.authorize_requests == []
    # The genuine POST (our own origin) still works.
    form = browser.consent_form(await browser.get(authorize_url(sidecar, client.client_id)))
    assert (await browser.answer(form)).status == 303


async def test_authorize_under_another_host_goes_to_the_issuer_host_first(
    sidecar: Sidecar, client: Registered
) -> None:
    url = authorize_url(sidecar, client.client_id)
    other = url.replace("127.0.0.1", "localhost", 1)
    async with aiohttp.ClientSession() as session, session.get(yarl.URL(other, encoded=True),
                                                               allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == url + "&mcpsc_host_redirect=1"
        assert "Set-Cookie" not in r.headers
    # A proxy that rewrites Host would bring the browser back under the other host: served, never a loop.
    async with aiohttp.ClientSession() as session, session.get(
        yarl.URL(other + "&mcpsc_host_redirect=1", encoded=True), allow_redirects=False
    ) as r:
        assert r.status == 200 and "consent_id" in await r.text()
