"""A scriptable fake IdP (aiohttp test server) and signing keys for the IdP client's unit tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

CLIENT_ID = "client:id é"
CLIENT_SECRET = "p@ss word+/:%&="
# Unit tests never wait on a real network; a hung fake answer must fail fast.
TEST_TIMEOUT_SECONDS = 0.3


@dataclass
class Seen:
    """One request the fake IdP received."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]


Answer = tuple[int, Any, dict[str, str]]  # status, body (dict/list -> JSON, str/bytes -> raw), headers


@dataclass
class FakeIdP:
    """Answers discovery, JWKS and token requests as the test scripts them."""

    base_url: str = ""
    issuer: str = ""
    discovery: dict[str, Any] = field(default_factory=dict)
    discovery_answer: Answer | None = None
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    token_answer: Answer = (200, {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600}, {})
    token_handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
    userinfo_answer: Answer = (200, {"sub": "user-1"}, {})
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, path_suffix: str) -> int:
        return sum(1 for s in self.seen if s.path.endswith(path_suffix))

    @property
    def token_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/token"]


def render(answer: Answer) -> web.Response:
    status, body, headers = answer
    if isinstance(body, dict | list):
        return web.json_response(body, status=status, headers=headers)
    if isinstance(body, str):
        body = body.encode()
    return web.Response(status=status, body=body, headers=headers)


def build_app(fake: FakeIdP) -> web.Application:
    async def record(request: web.Request) -> None:
        form = {k: str(v) for k, v in (await request.post()).items()} if request.method == "POST" else {}
        fake.seen.append(Seen(request.method, request.path, dict(request.headers), form))

    async def discovery(request: web.Request) -> web.Response:
        await record(request)
        if fake.discovery_answer is not None:
            return render(fake.discovery_answer)
        return web.json_response(fake.discovery)

    async def jwks(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response(fake.jwks)

    async def token(request: web.Request) -> web.StreamResponse:
        await record(request)
        if fake.token_handler is not None:
            return await fake.token_handler(request)
        return render(fake.token_answer)

    async def userinfo(request: web.Request) -> web.Response:
        await record(request)
        return render(fake.userinfo_answer)

    app = web.Application()
    app.router.add_get("/userinfo", userinfo)
    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/tenant/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)
    app.router.add_post("/token", token)
    return app


@pytest_asyncio.fixture
async def fake_idp() -> AsyncIterator[FakeIdP]:
    fake = FakeIdP()
    runner = web.AppRunner(build_app(fake), handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.base_url = fake.issuer = f"http://127.0.0.1:{port}"
    fake.discovery = {
        "issuer": fake.issuer,
        "authorization_endpoint": fake.base_url + "/authorize",
        "token_endpoint": fake.base_url + "/token",
        "jwks_uri": fake.base_url + "/jwks",
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Keys:
    """RSA keys for signing test ID tokens; ``other`` never appears in the fake's JWKS."""

    main: RSAPrivateKey
    second: RSAPrivateKey
    other: RSAPrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    def make() -> RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(make(), make(), make())


def public_jwk(key: RSAPrivateKey, kid: str | None, **extra: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    if kid is not None:
        data["kid"] = kid
    data.update(extra)
    return data
