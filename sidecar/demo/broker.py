"""``make run``: the full broker demo, nothing to configure.

What runs, all on loopback:

* the example MCP server (``sidecar.demo.example_server``, official SDK, unmodified) on a free port;
* a local OpenID Connect provider, ``oidc-provider-mock``, in a thread of this process (its login page asks
  for any user name; it accepts any client, so the sidecar's upstream client needs no registration);
* ``mcp-auth-sidecar serve`` in broker mode on the memory store: the authorization server MCP clients log in
  through (metadata, registration, client ID metadata documents, consent, ``/oauth/*``).

Before printing the URL to give an MCP client, a self-check walks the whole login the way a client would
(register, authorize, consent, upstream login, callback, token) and calls ``tools/list`` through the sidecar.
The upstream IdP's redirect URI is ``<public_url>/oauth/callback``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from sidecar.demo.processes import (
    MCP_HEADERS,
    TOOLS_LIST,
    free_port,
    run_until_stopped,
    stop,
    stop_on_signals,
    wait_http,
)
from sidecar.oauth.common import s256

DEMO_CLIENT_ID = "mcp-auth-sidecar-demo"
DEMO_CLIENT_SECRET = "demo-secret-not-for-production"  # the mock accepts any; production reads a Secret
DEMO_USER = "demo-user@example.com"
SELF_CHECK_REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the self-check stops at the redirect


@contextlib.contextmanager
def run_oidc_provider(port: int) -> Iterator[str]:
    """oidc-provider-mock on ``127.0.0.1:port`` in a daemon thread; yields its issuer URL."""
    import werkzeug.serving

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # authlib.jose warns about its own deprecation on import
        import oidc_provider_mock

    class QuietHandler(werkzeug.serving.WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    app = oidc_provider_mock.app(require_nonce=True)
    server = werkzeug.serving.make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.action:
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a.get("name", "")] = a.get("value", "")


@dataclass
class SelfCheck:
    tools: list[str]
    status: int
    unauthenticated_status: int
    challenge: str


async def self_check(public: str, idp: str) -> SelfCheck:
    """What an MCP client does, minus the browser: returns what tools/list answered with the token."""
    mcp_url = public + "/mcp"
    cookies: dict[str, str] = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(mcp_url, data=TOOLS_LIST, headers=MCP_HEADERS) as r:
            unauthenticated, challenge = r.status, r.headers.get("WWW-Authenticate", "")
        async with http.get(public + "/.well-known/oauth-authorization-server") as r:
            meta: dict[str, Any] = await r.json()
        registration = {
            "redirect_uris": [SELF_CHECK_REDIRECT],
            "client_name": "demo self-check",
            "token_endpoint_auth_method": "none",
        }
        async with http.post(meta["registration_endpoint"], json=registration) as r:
            client_id = (await r.json())["client_id"]
        verifier = secrets.token_urlsafe(48)
        query = urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": SELF_CHECK_REDIRECT,
            "state": "demo", "code_challenge": s256(verifier), "code_challenge_method": "S256",
            "resource": mcp_url,
        })

        async def get(url: str, **kw: Any) -> tuple[int, str, str]:
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())} if url.startswith(public) else {}
            async with http.request(kw.pop("method", "GET"), url, headers=headers, allow_redirects=False, **kw) as r:
                if url.startswith(public):
                    for raw in r.headers.getall("Set-Cookie", []):
                        jar: SimpleCookie = SimpleCookie()
                        jar.load(raw)
                        cookies.update({name: m.value for name, m in jar.items()})
                return r.status, r.headers.get("Location", ""), await r.text()

        _, _, page = await get(meta["authorization_endpoint"] + "?" + query)  # the consent page
        form = _Form()
        form.feed(page)
        _, upstream, _ = await get(form.action, method="POST", data={**form.fields, "decision": "approve"})
        _, callback, _ = await get(upstream, method="POST", data={"sub": DEMO_USER})  # the IdP's login form
        _, final, _ = await get(callback)
        code = parse_qs(urlsplit(final).query)["code"][0]
        async with http.post(meta["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": SELF_CHECK_REDIRECT, "client_id": client_id,
        }) as r:
            tokens = await r.json()
        async with http.post(mcp_url, data=TOOLS_LIST, headers={
            **MCP_HEADERS, "Authorization": f"Bearer {tokens['access_token']}"
        }) as r:
            status, body = r.status, await r.json(content_type=None)
    tools = [t["name"] for t in body.get("result", {}).get("tools", [])] if status == 200 else []
    return SelfCheck(tools, status, unauthenticated, challenge)


async def main() -> int:
    stopping = stop_on_signals()
    mcp_port, sidecar_port, metrics_port, idp_port = free_port(), free_port(8080), free_port(9090), free_port()
    public = f"http://127.0.0.1:{sidecar_port}"
    procs: list[subprocess.Popen[bytes]] = []
    with run_oidc_provider(idp_port) as idp:
        try:
            backend = subprocess.Popen([sys.executable, "-m", "sidecar.demo.example_server", "--port", str(mcp_port)])
            procs.append(backend)
            env = {
                **os.environ,
                "MCP_SIDECAR_MODE": "broker",
                "MCP_SIDECAR_STORE": "memory",
                "MCP_SIDECAR_IDP_ISSUER": idp,
                "MCP_SIDECAR_IDP_CLIENT_ID": DEMO_CLIENT_ID,
                "MCP_SIDECAR_IDP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
                "MCP_SIDECAR_LOG_FORMAT": os.environ.get("MCP_SIDECAR_LOG_FORMAT", "text"),
            # Nothing routes to the demo through a load balancer: Ctrl-C stops it at once.
            "MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": os.environ.get("MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS", "0"),
            }
            sidecar = subprocess.Popen(
                [
                    sys.executable, "-m", "sidecar", "serve",
                    "--listen", f"127.0.0.1:{sidecar_port}",
                    "--upstream", f"http://127.0.0.1:{mcp_port}",
                    "--public-url", public,
                    "--metrics-listen", f"127.0.0.1:{metrics_port}",
                ],
                env=env,
            )  # fmt: skip
            procs.append(sidecar)
            await wait_http(f"http://127.0.0.1:{mcp_port}/mcp", backend, "the example MCP server")
            await wait_http(f"{public}/healthz", sidecar, "the sidecar")
            try:
                check = await self_check(public, idp)
            except (aiohttp.ClientError, KeyError, ValueError) as exc:
                print(f"self-check FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            print(
                f"""
================================================================================
 mcp-auth-sidecar quickstart (broker mode: the sidecar is the MCP client's
 authorization server and logs users in at a local OpenID Connect provider)

 MCP endpoint (give this URL to an MCP client):  {public}/mcp
   e.g.  npx @modelcontextprotocol/inspector   then connect to the URL above,
         or claude mcp add --transport http demo {public}/mcp

 authorization server metadata:  {public}/.well-known/oauth-authorization-server
 protected-resource metadata:    {public}/.well-known/oauth-protected-resource/mcp
 unmodified MCP server behind:   http://127.0.0.1:{mcp_port}/mcp
 local OIDC provider (mock):     {idp}   (its login page takes any user name)
 upstream redirect URI:          {public}/oauth/callback
 metrics:                        http://127.0.0.1:{metrics_port}/metrics

 self-check:
   no token         -> {check.unauthenticated_status} WWW-Authenticate: {check.challenge}
   full OAuth login -> tools/list {check.status} tools={check.tools}

 Press Ctrl-C to stop.
================================================================================
""",
                flush=True,
            )
            if check.status != 200 or check.unauthenticated_status != 401:
                print("self-check FAILED: see the log lines above", file=sys.stderr)
                return 1
            return await run_until_stopped(procs, stopping)
        finally:
            stop(procs)
