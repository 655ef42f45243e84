"""The services around the sidecar in the fault tests: a rotating IdP that can be slowed down or switched off and
that treats a rotated-away refresh token as theft (as Auth0, Okta and Keycloak do with rotation on), a backend
process that can be killed and restarted on the same port, and grants seeded straight into the store."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.store.base import TokenStore, UpstreamCredentials, mint_access_token, mint_refresh_token
from tests.support.backends import free_port

CLIENT_ID, CLIENT_SECRET = "reliability-client", "reliability-secret"
# How long a backend process may take to listen.
BACKEND_START_SECONDS = 20.0


def new_keys() -> str:
    return "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass
class RotatingIdP:
    """Discovery + a refresh_token grant with strict rotation. ``delay`` slows every answer (before anything is
    decided: a request abandoned meanwhile changes nothing); :meth:`down`/:meth:`up` close and reopen the port."""

    lifetime: float = 3600.0
    delay: float = 0.0
    port: int = field(default_factory=free_port)
    calls: int = 0
    in_flight: int = 0
    peak: int = 0
    rotations: int = 0
    reuse_detected: int = 0  # a rotated-away refresh token came back: the IdP revoked that family
    _current: dict[str, str | None] = field(default_factory=dict)  # family -> its live refresh token
    _family_of: dict[str, str] = field(default_factory=dict)  # every refresh token ever issued -> family
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings_env(self) -> dict[str, str]:
        return {"MCP_SIDECAR_IDP_ISSUER": self.issuer, "MCP_SIDECAR_IDP_CLIENT_ID": CLIENT_ID,
                "MCP_SIDECAR_IDP_CLIENT_SECRET": CLIENT_SECRET}  # fmt: skip

    def issue(self) -> tuple[str, str]:
        """A new token family (what a login would have produced): access and refresh token."""
        family = secrets.token_hex(8)
        refresh = "rt-" + secrets.token_urlsafe(12)
        self._current[family] = refresh
        self._family_of[refresh] = family
        return "at-" + secrets.token_urlsafe(12), refresh

    def lost_families(self) -> int:
        return sum(1 for live in self._current.values() if live is None)

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/authorize",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "code_challenge_methods_supported": ["S256"],
        })  # fmt: skip

    async def _jwks(self, _: web.Request) -> web.Response:
        return web.json_response({"keys": []})

    async def _token(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            form = await request.post()
            refresh = str(form.get("refresh_token", ""))
            family = self._family_of.get(refresh)
            if form.get("grant_type") != "refresh_token" or family is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            if self._current.get(family) != refresh:
                # RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the whole family.
                if self._current.get(family) is not None:
                    self.reuse_detected += 1
                self._current[family] = None
                return web.json_response({"error": "invalid_grant", "error_description": "reused"}, status=400)
            new = "rt-" + secrets.token_urlsafe(12)
            self._current[family] = new
            self._family_of[new] = family
            self.rotations += 1
            return web.json_response({
                "access_token": "at-" + secrets.token_urlsafe(12), "token_type": "Bearer",
                "expires_in": self.lifetime, "refresh_token": new,
            })  # fmt: skip
        finally:
            self.in_flight -= 1

    async def start(self) -> RotatingIdP:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1,
                                     handler_cancellation=True)  # fmt: skip
        await self._runner.setup()
        await self.up()
        return self

    async def up(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def down(self) -> None:
        """Connections are refused from now on (the listener is closed)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def seed_grants(store: TokenStore, idp: RotatingIdP, n: int, *, expired: bool = True) -> list[str]:
    """``n`` grants holding the IdP's tokens, their upstream access tokens already expired (so the first request
    of each refreshes); returns the client access tokens to call the MCP server with."""

    async def one(i: int) -> str:
        access, refresh = idp.issue()
        grant = await store.create_grant(
            subject=f"user-{i}@example.com",
            client_id="client-1",
            scopes=["openid"],
            claims={"sub": f"user-{i}@example.com"},
            upstream=UpstreamCredentials(
                access_token=access, refresh_token=refresh,
                access_expires_at=time.time() + (-30 if expired else 3600),
            ),
        )  # fmt: skip
        token = mint_access_token(grant.grant_id)
        await store.issue_tokens(grant.grant_id, access_token=token, refresh_token=mint_refresh_token(grant.grant_id),
                                 access_ttl=3600, refresh_ttl=86400)  # fmt: skip
        return token

    out: list[str] = []
    for start in range(0, n, 100):
        out += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 100))))
    return out


BACKEND_CODE = """
import asyncio, sys
from aiohttp import web

delay = float(sys.argv[2])

async def handle(request):
    await request.read()
    if delay:
        await asyncio.sleep(delay)
    return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})

async def sse(request):
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for n in range(3):
        event = b'id: %d\\nevent: message\\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\\n\\n'
        await resp.write(event % n)
    await resp.write(b'id: 3\\nevent: message\\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\\n\\n')
    await resp.write_eof()
    return resp

app = web.Application()
app.router.add_route("*", "/sse", sse)
app.router.add_route("*", "/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, reuse_address=True)
"""


class BackendProcess:
    """A JSON-RPC-ish MCP stand-in in a process of its own, answering after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.port = free_port()
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BACKEND_CODE, str(self.port), str(self.delay)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + BACKEND_START_SECONDS
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise AssertionError("the backend process did not listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def broker_env(idp: RotatingIdP, keys: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {
        "MCP_SIDECAR_MODE": "broker",
        "MCP_SIDECAR_STORE": "redis",
        "MCP_SIDECAR_KEY_PREFIX": prefix,
        "MCP_SIDECAR_ENCRYPTION_KEYS": keys,
        "MCP_SIDECAR_TOKEN_CACHE_SECONDS": "0",  # every request asks the store: its outages show at once
        "MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": "0",
        **idp.settings_env(),
    }
    env.update({"MCP_SIDECAR_" + k.upper(): str(v) for k, v in extra.items()})
    return env
