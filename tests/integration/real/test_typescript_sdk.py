"""The TypeScript MCP SDK client (``@modelcontextprotocol/sdk`` from npm) against the broker, headless
(issue 13): discovery, registration (dynamic, or a Client ID Metadata Document served over https on
loopback), consent, login at panva's ``oidc-provider``, ``finishAuth``, tools, and a refresh after the
client's token expired with four calls in parallel. The path-prefixed case runs behind a prefix-stripping
"ingress" that also drops the challenge's ``resource_metadata`` hint, so the SDK finds the protected-resource
metadata at RFC 9728 §3.1's place by itself (and refuses it if ``resource`` is wrong: the old bug).

The node script (tests/js/mcp_client.mjs) and this test talk one line per step; this test plays the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.oauth import CIMD_SSL_CONTEXT
from tests.support.backends import free_port
from tests.support.mcp_servers import running_mcp_server
from tests.support.oauth_harness import Browser, CimdServer, query_of
from tests.support.real_tools import JS_DIR, OidcProvider, require_node_packages, running_oidc_provider

CLIENT_REDIRECT = "http://127.0.0.1:33418/callback"
CLIENT_TOKEN_TTL = 2
# One step of the node client (start-up, discovery and a login's worth of requests) on a busy machine.
STEP_TIMEOUT_SECONDS = 30.0
PREFIX = "/tenant"


@pytest.fixture(scope="module")
def mcp_backend() -> Iterator[str]:
    with running_mcp_server(stateless=False, json_response=False) as url:
        yield url


@contextlib.asynccontextmanager
async def sidecar(port: int, public_url: str, idp: OidcProvider, upstream: str,
                  cimd: CimdServer | None = None) -> AsyncIterator[web.Application]:
    settings = Settings.model_validate({
        "mode": "broker", "upstream": upstream, "public_url": public_url, "log_format": "text",
        "access_token_ttl_seconds": CLIENT_TOKEN_TTL, "cimd_allow_private_addresses": True,
        **idp.sidecar_settings(),
    })
    app = build_app(settings)
    if cimd is not None:
        app[CIMD_SSL_CONTEXT] = cimd.ssl_context
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield app
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def ingress(port: int, backend_port: int) -> AsyncIterator[list[str]]:
    """A prefix-stripping reverse proxy: ``/tenant/*`` goes to the sidecar without the prefix, ``/.well-known/*``
    as it is; ``resource_metadata`` is removed from challenges (a client without the hint). Yields the paths
    the sidecar was asked for."""
    seen: list[str] = []
    session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())

    async def forward(request: web.Request) -> web.StreamResponse:
        path = request.raw_path
        if path.startswith(PREFIX + "/"):
            path = path[len(PREFIX):]
        elif not path.startswith("/.well-known/"):
            return web.Response(status=404)
        seen.append(path.split("?")[0])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with session.request(request.method, f"http://127.0.0.1:{backend_port}{path}", headers=headers,
                                   data=await request.read(), allow_redirects=False) as r:
            body = await r.read()
            out = {k: v for k, v in r.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            if "WWW-Authenticate" in out:
                out["WWW-Authenticate"] = re.sub(r',?\s*resource_metadata="[^"]*"', "", out["WWW-Authenticate"])
            return web.Response(status=r.status, body=body, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield seen
    finally:
        await runner.cleanup()
        await session.close()


async def drive_sdk_client(idp: OidcProvider, sidecar_url: str, mcp_url: str, **config: Any) -> dict[str, Any]:
    """Run the node client through login, tools and the parallel refresh; return what it reported."""
    node = require_node_packages()
    proc = await asyncio.create_subprocess_exec(
        str(node), str(JS_DIR / "mcp_client.mjs"), json.dumps({"url": mcp_url, "redirectUrl": CLIENT_REDIRECT,
                                                              **config}),
        cwd=str(JS_DIR), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    report: dict[str, Any] = {}
    log: list[str] = []

    async def next_line(kind: str) -> str:
        async with asyncio.timeout(STEP_TIMEOUT_SECONDS):
            while True:
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError(f"the node client exited before {kind}: {''.join(log)}")
                line = raw.decode()
                log.append(line)
                if line.startswith("ERROR"):
                    raise AssertionError("the node client failed: " + "".join(log))
                if line.startswith(kind + " "):
                    return line[len(kind) + 1:].strip()

    try:
        authorize = await next_line("AUTHORIZE")
        report["authorize"] = authorize
        async with Browser(idp, sidecar_url) as browser:  # type: ignore[arg-type]
            final = await browser.login(authorize)
        assert final.startswith(CLIENT_REDIRECT), final
        proc.stdin.write(f"CODE {query_of(final)['code']}\n".encode())
        await proc.stdin.drain()
        report["tools"] = json.loads(await next_line("TOOLS"))
        await asyncio.sleep(CLIENT_TOKEN_TTL + 0.5)  # the client's access token expires
        proc.stdin.write(b"GO\n")
        await proc.stdin.drain()
        report["parallel"] = json.loads(await next_line("PARALLEL"))
        report["done"] = json.loads(await next_line("DONE"))
        async with asyncio.timeout(STEP_TIMEOUT_SECONDS):
            assert await proc.wait() == 0, "".join(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return report


def check_session(report: dict[str, Any]) -> None:
    assert report["tools"]["tools"] == ["add", "echo"]
    assert report["tools"]["echo"] == [{"type": "text", "text": "hello"}]
    assert report["parallel"] == ["2", "3", "4", "5"]  # all four calls succeeded after the refresh
    assert report["done"]["tokenSaves"] >= 2  # the login's tokens, then at least one refresh


async def test_typescript_sdk_with_dynamic_registration(mcp_backend: str) -> None:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with running_oidc_provider([public + "/oauth/callback"]) as idp, \
            sidecar(port, public, idp, mcp_backend):
        report = await drive_sdk_client(idp, public, public + "/mcp")
    check_session(report)
    assert report["done"]["registrations"] == 1


async def test_typescript_sdk_with_cimd_behind_a_prefix_stripping_ingress_without_the_hint(mcp_backend: str) -> None:
    sidecar_port, ingress_port = free_port(), free_port()
    public = f"http://127.0.0.1:{ingress_port}{PREFIX}"
    cimd = CimdServer()
    await cimd.start()
    try:
        client_id = cimd.client_document("/sdk-client.json", redirect_uris=[CLIENT_REDIRECT],
                                         client_name="TypeScript SDK test client")
        async with running_oidc_provider([public + "/oauth/callback"]) as idp, \
                sidecar(sidecar_port, public, idp, mcp_backend, cimd=cimd), \
                ingress(ingress_port, sidecar_port) as seen:
            report = await drive_sdk_client(idp, public, public + "/mcp", clientMetadataUrl=client_id)
    finally:
        await cimd.close()
    check_session(report)
    assert report["done"]["clientId"] == client_id  # the document URL is the client id: no registration
    assert cimd.fetches["/sdk-client.json"] >= 1  # the sidecar fetched the document over https
    # Without the hint the SDK asked at RFC 9728's place, and accepted the document there.
    assert "/.well-known/oauth-protected-resource/tenant/mcp" in seen
    assert "/oauth/register" not in seen
