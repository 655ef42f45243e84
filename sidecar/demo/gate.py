"""``python -m sidecar.demo --gate``: an unmodified MCP server (official SDK) behind the sidecar in gate mode.

What runs, all on loopback:
* the example MCP server (``sidecar.demo.example_server``) on a free port, knowing nothing about tokens;
* a tiny token issuer in this process: an RSA key, its JWKS at ``/jwks.json``, tokens minted here;
* ``mcp-auth-sidecar serve`` in gate mode with signature, issuer and audience checks against that JWKS.

Then it calls ``tools/list`` through the sidecar with a valid token and with an expired one, prints the
results and the ``curl`` commands to repeat them, and keeps running until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.demo.processes import (
    MCP_HEADERS,
    TOOLS_LIST,
    free_port,
    run_until_stopped,
    stop,
    stop_on_signals,
    wait_http,
)

ISSUER_AUDIENCE = "mcp-demo"


class Issuer:
    """A signing key and its JWKS: stands in for your IdP in the demo."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "demo-1", "alg": "RS256", "use": "sig"})
        self.jwks = {"keys": [jwk]}

    def token(self, lifetime: float, subject: str = "demo-user") -> str:
        now = time.time()
        claims = {"iss": self.url, "aud": ISSUER_AUDIENCE, "sub": subject, "iat": int(now), "exp": int(now + lifetime)}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "demo-1"})

    async def serve(self, port: int) -> web.AppRunner:
        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks)

        app = web.Application()
        app.router.add_get("/jwks.json", jwks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner


async def call(url: str, token: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.post(
        url, data=TOOLS_LIST, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, resp.headers.get("WWW-Authenticate", ""), await resp.text()


def curl(url: str, token: str) -> str:
    headers = " ".join(f"-H '{k}: {v}'" for k, v in MCP_HEADERS.items())
    return f"curl -i {url} {headers} -H 'Authorization: Bearer {token}' -d '{TOOLS_LIST}'"


async def main() -> int:
    stopping = stop_on_signals()
    mcp_port, sidecar_port, metrics_port, issuer_port = free_port(), free_port(8080), free_port(9090), free_port()
    public = f"http://127.0.0.1:{sidecar_port}"
    issuer = Issuer(f"http://127.0.0.1:{issuer_port}")
    issuer_runner = await issuer.serve(issuer_port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend = subprocess.Popen([sys.executable, "-m", "sidecar.demo.example_server", "--port", str(mcp_port)])
        procs.append(backend)
        env = {
            **os.environ,
            "MCP_SIDECAR_JWKS_URL": f"{issuer.url}/jwks.json",
            "MCP_SIDECAR_ISSUER": issuer.url,
            "MCP_SIDECAR_AUDIENCE": ISSUER_AUDIENCE,
            "MCP_SIDECAR_AUTHORIZATION_SERVERS": issuer.url,
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
        )
        procs.append(sidecar)
        await wait_http(f"http://127.0.0.1:{mcp_port}/mcp", backend, "the example MCP server")
        await wait_http(f"{public}/healthz", sidecar, "the sidecar")

        mcp_url = f"{public}/mcp"
        good, expired = issuer.token(3600), issuer.token(-3600)
        ok_status, _, ok_body = await call(mcp_url, good)
        bad_status, bad_challenge, _ = await call(mcp_url, expired)
        tools = [t["name"] for t in json.loads(ok_body).get("result", {}).get("tools", [])] if ok_status == 200 else []
        print(
            f"""
================================================================================
 mcp-auth-sidecar quickstart (gate mode, signature verification on)

 MCP endpoint (give this to an MCP client):  {mcp_url}
 unmodified MCP server behind it:            http://127.0.0.1:{mcp_port}/mcp
 token issuer (JWKS):                        {issuer.url}/jwks.json
 protected-resource metadata:                {public}/.well-known/oauth-protected-resource/mcp
 metrics:                                    http://127.0.0.1:{metrics_port}/metrics

 self-check, tools/list through the sidecar:
   valid token   -> {ok_status} tools={tools}
   expired token -> {bad_status} WWW-Authenticate: {bad_challenge}

 Try it yourself. A token that works (valid for one hour):
   {curl(mcp_url, good)}

 A token that expired an hour ago (401 + WWW-Authenticate, on tools/list itself):
   {curl(mcp_url, expired)}

 Press Ctrl-C to stop.
================================================================================
""",
            flush=True,
        )
        if ok_status != 200 or bad_status != 401:
            print("self-check FAILED: see the log lines above", file=sys.stderr)
            return 1
        return await run_until_stopped(procs, stopping)
    finally:
        stop(procs)
        await issuer_runner.cleanup()

