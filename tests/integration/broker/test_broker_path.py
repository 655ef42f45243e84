"""Broker mode's proxied request path: what the backend receives, and what the client is told.

The store is the real memory store (the Redis runs live in tests/integration/broker/test_broker_redis.py);
the IdP is scripted so each failure mode can be produced on demand.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.idp import IdPRejected, IdPUnavailable
from sidecar.store.base import (
    StoreUnavailable,
    UpstreamCredentials,
    mint_access_token,
    mint_refresh_token,
    new_grant_id,
)
from sidecar.store.memory import MemoryTokenStore
from tests.support.fake_idp import ScriptedIdP


class Echo:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({"headers": request.headers.copy(), "path": request.raw_path})
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})


@pytest.fixture
async def echo(aiohttp_server: Any) -> tuple[Echo, TestServer]:
    e = Echo()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", e.handle)
    return e, await aiohttp_server(app)


def settings_for(backend: TestServer, **extra: Any) -> Settings:
    return Settings(
        mode="broker",
        upstream=str(backend.make_url("/")).rstrip("/"),
        public_url="https://mcp.example.com",
        idp_issuer="https://idp.example.com",
        idp_client_id="sidecar",
        idp_client_secret="s3cret",
        **extra,
    )


async def new_grant(store: MemoryTokenStore, *, exp_in: float, refresh: str | None = "up-rt-0") -> tuple[str, str]:
    grant = await store.create_grant(
        subject="u1",
        client_id="client-1",
        scopes=["openid", "email"],
        claims={"sub": "u1", "email": "u1@example.com"},
        upstream=UpstreamCredentials(
            access_token="up-at-0", refresh_token=refresh, access_expires_at=time.time() + exp_in
        ),
    )
    at = mint_access_token(grant.grant_id)
    await store.issue_tokens(
        grant.grant_id,
        access_token=at,
        refresh_token=mint_refresh_token(grant.grant_id),
        access_ttl=3600,
        refresh_ttl=86400,
    )
    return grant.grant_id, at


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="brokerpath")


async def client_for(aiohttp_client: Any, settings: Settings, store: Any, idp: ScriptedIdP) -> TestClient:
    return await aiohttp_client(build_app(settings, store=store, idp=idp))  # type: ignore[arg-type]


MCP = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


async def test_backend_gets_fresh_upstream_token_and_identity_never_the_clients(aiohttp_client, echo, store) -> None:
    e, backend = echo
    idp = ScriptedIdP()
    _gid, at = await new_grant(store, exp_in=-5)  # upstream token already expired
    client = await client_for(aiohttp_client, settings_for(backend), store, idp)
    resp = await client.post(
        "/mcp",
        data=BODY,
        headers={
            **MCP,
            "Authorization": f"Bearer {at}",
            "X-Forwarded-User": "admin",  # spoofed copies of injected names, in every spelling
            "x_forwarded_email": "admin@evil.example",
            "X-FORWARDED-EMAIL": "admin@evil.example",
        },
    )
    assert resp.status == 200
    seen = e.seen[-1]["headers"]
    assert seen.getall("Authorization") == ["Bearer up-at-1"]  # refreshed, not the stale up-at-0
    assert seen.getall("X-Forwarded-User") == ["u1"]
    assert seen.getall("X-Forwarded-Email") == ["u1@example.com"]
    assert "x_forwarded_email" not in {k.lower() for k in seen}
    assert at not in " ".join(seen.values())  # the client's own token never reaches the backend
    assert idp.calls == 1


async def test_expired_upstream_token_is_never_forwarded_when_idp_is_down(aiohttp_client, echo, store) -> None:
    e, backend = echo
    idp = ScriptedIdP()
    idp.fail = IdPUnavailable("connection refused")
    gid, at = await new_grant(store, exp_in=-5)
    client = await client_for(aiohttp_client, settings_for(backend), store, idp)
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"] == "temporarily_unavailable"
    assert e.seen == []  # nothing reached the backend
    assert (await store.get_grant(gid)).upstream.refresh_token == "up-rt-0"  # the grant survives
    idp.fail = None  # the IdP comes back: the next request goes through with a fresh token
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 200
    assert e.seen[-1]["headers"]["Authorization"] == "Bearer up-at-2"


async def test_invalid_grant_at_the_idp_means_401_reauthorize(aiohttp_client, echo, store) -> None:
    e, backend = echo
    idp = ScriptedIdP()
    idp.fail = IdPRejected("invalid_grant", "refresh token revoked")
    _, at = await new_grant(store, exp_in=-5)
    client = await client_for(aiohttp_client, settings_for(backend), store, idp)
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 401
    challenge = resp.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge and "re-authorization" in challenge
    assert e.seen == []


@pytest.mark.parametrize(
    "token",
    [
        mint_access_token(new_grant_id()),
        "mcpat_0000.unknownsecret",
        "random-opaque",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ],
)
async def test_tokens_not_issued_here_are_401(aiohttp_client, echo, store, token: str) -> None:
    e, backend = echo
    client = await client_for(aiohttp_client, settings_for(backend), store, ScriptedIdP())
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {token}"})
    assert resp.status == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert e.seen == []


async def test_revoked_token_stops_working_once_the_cache_bound_passes(aiohttp_client, echo, store) -> None:
    _e, backend = echo
    _, at = await new_grant(store, exp_in=3600)
    client = await client_for(aiohttp_client, settings_for(backend, token_cache_seconds=0), store, ScriptedIdP())
    assert (await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})).status == 200
    assert await store.revoke_token(at)
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 401


class BrokenStore:
    """Every call fails as an unreachable Redis would."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable(f"{name}: connection refused")

        return fail


async def test_store_down_is_503_with_retry_after_and_readyz_says_why(aiohttp_client, echo) -> None:
    _e, backend = echo
    client = await client_for(aiohttp_client, settings_for(backend), BrokenStore(), ScriptedIdP())
    resp = await client.post(
        "/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {mint_access_token(new_grant_id())}"}
    )
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "store" in (await ready.json())["problems"]


async def test_required_scope_missing_from_grant_is_403(aiohttp_client, echo, store) -> None:
    _e, backend = echo
    _, at = await new_grant(store, exp_in=3600)
    client = await client_for(aiohttp_client, settings_for(backend, required_scopes=["admin"]), store, ScriptedIdP())
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 403
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    assert 'scope="admin"' in resp.headers["WWW-Authenticate"]
