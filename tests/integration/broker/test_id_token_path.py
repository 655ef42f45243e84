"""``client_token: id_token`` (forward mode) on the proxied path: the client's bearer is the upstream id_token,
verified against the real OIDC provider's keys on every request and forwarded to the backend."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from tests.support.oidc import IdPFront

MCP = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


@pytest.fixture
async def backend(aiohttp_server: Any) -> tuple[list[Any], TestServer]:
    seen: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.copy())
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return seen, await aiohttp_server(app)


def settings_for(front: IdPFront, server: TestServer) -> Settings:
    return Settings.model_validate(
        {
            "mode": "broker",
            "client_token": "id_token",
            "upstream": str(server.make_url("")).rstrip("/"),
            "public_url": "https://mcp.example.com",
            **front.sidecar_settings(),
        }
    )


def tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{forged}.{sig}"


async def test_verified_id_token_is_forwarded_with_identity(aiohttp_client, idp_front, backend) -> None:
    seen, server = backend
    issued = await idp_front.obtain_tokens(sub="alice@example.com")
    assert issued.id_token
    client = await aiohttp_client(build_app(settings_for(idp_front, server)))
    resp = await client.post(
        "/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {issued.id_token}", "X-Forwarded-User": "x"}
    )
    assert resp.status == 200
    assert seen[-1].getall("Authorization") == [f"Bearer {issued.id_token}"]
    assert seen[-1].getall("X-Forwarded-User") == ["alice@example.com"]


async def test_forged_or_foreign_tokens_are_401(aiohttp_client, idp_front, backend) -> None:
    seen, server = backend
    issued = await idp_front.obtain_tokens(sub="alice@example.com")
    client = await aiohttp_client(build_app(settings_for(idp_front, server)))
    for token in (tampered(issued.id_token), issued.access_token + "x", "opaque-token"):
        resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {token}"})
        assert resp.status == 401, token
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert seen == []
