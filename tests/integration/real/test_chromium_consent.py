"""The consent page in a real browser (issue 13): Debian's Chromium driven by Playwright (``executable_path``,
never ``playwright install``), the broker in front of panva's ``oidc-provider``. Allow (through the
provider's own login and consent pages back to the client), Deny, remembered consent, framing refused, the
page reached under another host name (sent to the issuer's host first), and the consent cookie as the browser stored it.

``MCPSC_UPDATE_SCREENSHOTS=1`` also writes the consent page's screenshot to ``docs/consent-page.png``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import build_app
from sidecar.config import Settings
from tests.integration.oauth.flow import authorize_url, register
from tests.support.backends import free_port
from tests.support.oauth_harness import Sidecar, query_of
from tests.support.real_tools import OidcProvider, require_chromium, running_oidc_provider

CLIENT_REDIRECT = "http://127.0.0.1:33418/callback"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]
# One page load or navigation on loopback, on a busy machine.
PAGE_TIMEOUT_MS = 15_000
DOCS = Path(__file__).resolve().parents[3] / "docs"


@contextlib.asynccontextmanager
async def broker(idp: OidcProvider, port: int, **extra: Any) -> AsyncIterator[Sidecar]:
    public = f"http://127.0.0.1:{port}"
    settings = Settings.model_validate({
        "mode": "broker", "upstream": "http://127.0.0.1:9", "public_url": public, "log_format": "text",
        "display_name": "Acme Tickets", **idp.sidecar_settings(), **extra,
    })
    runner = web.AppRunner(build_app(settings), handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Sidecar(public, runner.app, settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    executable = require_chromium()
    async_api = pytest.importorskip("playwright.async_api", reason="playwright (PyPI) is not installed")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(executable), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def new_context(chromium: Any) -> Any:
    context = await chromium.new_context(viewport={"width": 760, "height": 720})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    # The MCP client's redirect URI: the browser lands there with the code (nothing listens; we answer).
    await context.route(CLIENT_REDIRECT + "**", lambda route: route.fulfill(status=200, body="client got it"))
    return context


async def sign_in_at_the_provider(page: Any) -> None:
    """oidc-provider's own pages: log in (first time in this browser), then its consent screen."""
    await page.wait_for_selector("form")
    if await page.locator("input[name=login]").count():
        await page.fill("input[name=login]", "alice")
        await page.fill("input[name=password]", "any")
        await page.click("button[type=submit]")
        await page.wait_for_selector("form")
    await page.click("button[type=submit]")  # the provider's consent ("Continue")


async def test_consent_page_in_chromium(chromium: Any, tmp_path: Path) -> None:
    port = free_port()
    async with running_oidc_provider([f"http://127.0.0.1:{port}/oauth/callback"]) as idp, \
            broker(idp, port) as sidecar, aiohttp.ClientSession() as http:
        client = await register(http, sidecar, client_name="Claude Desktop", redirect_uris=[CLIENT_REDIRECT])
        url = authorize_url(sidecar, client.client_id, redirect_uri=CLIENT_REDIRECT,
                            scope="openid email offline_access")

        # --- Allow: consent page, the provider's login and consent, back to the client with a code
        context = await new_context(chromium)
        page = await context.new_page()
        first = await page.goto(url)
        assert first.status == 200
        assert await page.locator("h1").inner_text() == "Allow access?"
        assert await page.locator("button.primary").inner_text() == "Allow"
        assert "Acme Tickets" in await page.content()
        await page.screenshot(path=str(tmp_path / "consent.png"), full_page=True)
        if os.environ.get("MCPSC_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(exist_ok=True)
            await page.screenshot(path=str(DOCS / "consent-page.png"), full_page=True)
        cookies = [c for c in await context.cookies() if c["name"].startswith("__Host-mcpsc-consent-")]
        assert len(cookies) == 1
        assert cookies[0]["secure"] and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Lax"
        await page.click("button.primary")
        await sign_in_at_the_provider(page)
        await page.wait_for_url(CLIENT_REDIRECT + "**")
        answer = query_of(page.url)
        assert answer["state"] == "client-state" and answer["code"] and answer["iss"] == sidecar.url

        # --- remembered: the same browser and client go straight to the provider (no consent page)
        seen: list[tuple[str, int]] = []
        page.on("response", lambda r: seen.append((r.url, r.status)))
        await page.goto(url)
        await sign_in_at_the_provider(page)
        await page.wait_for_url(CLIENT_REDIRECT + "**")
        assert [s for u, s in seen if "/oauth/authorize" in u] == [302]
        assert "code" in query_of(page.url)
        await context.close()

        # --- Deny: back to the client with access_denied, nothing sent upstream
        context = await new_context(chromium)
        page = await context.new_page()
        await page.goto(url)
        await page.click("button.secondary")
        await page.wait_for_url(CLIENT_REDIRECT + "**")
        assert query_of(page.url)["error"] == "access_denied"

        # --- framing refused: frame-ancestors 'none' / X-Frame-Options: DENY
        framer = await context.new_page()
        async with framer.expect_response(lambda r: "/oauth/authorize" in r.url):
            await framer.set_content(f'<iframe id=f src="{url}" width=600 height=400></iframe>')
        await framer.wait_for_timeout(300)  # let Chromium apply the policy to the frame
        child = framer.frames[1]
        assert await child.locator("button").count() == 0  # no clickable Allow inside someone else's page

        # --- the page under another host name: /oauth/authorize first redirects to the issuer's host (issue 12),
        # so the consent cookie and the POST live on one host and Allow leads on to the provider's sign-in.
        other = await context.new_page()
        response = await other.goto(url.replace("127.0.0.1", "localhost", 1))
        assert response.status == 200
        assert other.url.startswith(sidecar.url + "/oauth/authorize")
        action = await other.locator("form").get_attribute("action")
        assert action == sidecar.url + "/oauth/consent"
        await other.click("button.primary")
        await other.wait_for_selector("form")  # the provider's own page, not an error of ours
        assert other.url.startswith(idp.issuer), other.url
        await context.close()
