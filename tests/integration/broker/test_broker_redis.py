"""The broker engine end to end on real services: Redis (standalone, started on a free port), the real OIDC
provider behind a rotating front, the sidecar in-process and as separate processes (DESIGN §5-§7).

What a user would notice: exactly one refresh at the IdP however many requests and replicas need it, no
``invalid_grant`` over many rotations, 503 + Retry-After while the IdP or Redis is down, and service back
as soon as they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import TokenStore, UpstreamCredentials, mint_access_token, mint_refresh_token
from tests.support.oidc import IdPFront
from tests.support.redis_servers import RedisServer, free_port, random_prefix, start_server

pytestmark = pytest.mark.redis

MCP = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
PROCESS_START_SECONDS = 20.0


class Echo:
    def __init__(self) -> None:
        self.auth: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})


@pytest.fixture
async def echo(aiohttp_server: Any) -> tuple[Echo, TestServer]:
    e = Echo()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", e.handle)
    return e, await aiohttp_server(app)


def new_keys() -> str:
    return "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def broker_settings(front: IdPFront, backend: TestServer, redis: str, prefix: str, keys: str, **extra: Any) -> Settings:
    return Settings.model_validate(
        {
            "mode": "broker",
            "upstream": str(backend.make_url("")).rstrip("/"),
            "public_url": "https://mcp.example.com",
            "store": "redis",
            "redis_url": redis,
            "key_prefix": prefix,
            "encryption_keys": keys,
            "redis_timeout_seconds": 1,
            "idp_timeout_seconds": 3,
            "refresh_lock_seconds": 5,
            **front.sidecar_settings(),
            **extra,
        }
    )


async def seed_grant(store: TokenStore, front: IdPFront, *, expired: bool = True) -> tuple[str, str]:
    """A grant holding real IdP tokens (from a real login), upstream access token already expired."""
    issued = await front.obtain_tokens(sub="alice@example.com")
    grant = await store.create_grant(
        subject="alice@example.com",
        client_id="client-1",
        scopes=["openid", "email"],
        claims={"sub": "alice@example.com", "email": "alice@example.com"},
        upstream=UpstreamCredentials(
            access_token=issued.access_token,
            refresh_token=issued.refresh_token,
            id_token=issued.id_token,
            access_expires_at=time.time() + (-30 if expired else 3600),
        ),
    )
    at = mint_access_token(grant.grant_id)
    await store.issue_tokens(
        grant.grant_id, access_token=at, refresh_token=mint_refresh_token(grant.grant_id),
        access_ttl=3600, refresh_ttl=86400,
    )  # fmt: skip
    return grant.grant_id, at


@pytest.fixture
async def world(idp_front: IdPFront, echo: tuple[Echo, TestServer], redis_url: str) -> AsyncIterator[dict[str, Any]]:
    prefix, keys = random_prefix(), new_keys()
    settings = broker_settings(idp_front, echo[1], redis_url, prefix, keys)
    store = open_store(settings, KeyRing.from_setting(keys))
    yield {"settings": settings, "store": store, "front": idp_front, "echo": echo[0], "backend": echo[1],
           "prefix": prefix, "keys": keys, "redis_url": redis_url}  # fmt: skip
    # clean up only our own keys
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()
    await store.close()


async def post_many(session: aiohttp.ClientSession, url: str, token: str, n: int) -> list[int]:
    async def one() -> int:
        async with session.post(url, data=BODY, headers={**MCP, "Authorization": f"Bearer {token}"}) as r:
            await r.read()
            return r.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_hundred_concurrent_requests_on_expired_grant_one_refresh_at_the_idp(aiohttp_client, world) -> None:
    front: IdPFront = world["front"]
    _, at = await seed_grant(world["store"], front)
    client = await aiohttp_client(build_app(world["settings"]))
    statuses = await post_many(client.session, str(client.make_url("/mcp")), at, 100)
    assert statuses == [200] * 100
    assert front.refresh_calls == 1
    fresh = {a for a in world["echo"].auth}
    assert len(fresh) == 1  # every request carried the one refreshed upstream token
    # what is in Redis: the new credentials, encrypted, and no token in clear
    grant = await world["store"].get_grant(at.split("_", 1)[1].split(".", 1)[0])
    assert "Bearer " + grant.upstream.access_token in fresh


def spawn_sidecar(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": "0"}  # no endpoint removal to wait for here
    keys = ("mode", "store", "redis_url", "key_prefix", "encryption_keys", "idp_issuer", "idp_client_id",
            "idp_client_secret", "redis_timeout_seconds", "idp_timeout_seconds", "refresh_lock_seconds")  # fmt: skip
    for key in keys:
        value = getattr(settings, key)
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        env["MCP_SIDECAR_" + key.upper()] = text
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{free_port()}", "--upstream", str(settings.upstream),
         "--public-url", str(settings.public_url)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


async def wait_ready(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PROCESS_START_SECONDS
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


async def test_two_sidecar_processes_sharing_redis_refresh_exactly_once(world, processes) -> None:
    front: IdPFront = world["front"]
    _, at = await seed_grant(world["store"], front)
    ports = [free_port(), free_port()]
    for port in ports:
        processes.append(spawn_sidecar(world["settings"], port))
    async with aiohttp.ClientSession() as session:
        for port, proc in zip(ports, processes, strict=True):
            await wait_ready(session, f"http://127.0.0.1:{port}/readyz", proc)
        results = await asyncio.gather(
            *(post_many(session, f"http://127.0.0.1:{port}/mcp", at, 50) for port in ports)
        )
    assert [s for r in results for s in r] == [200] * 100
    assert front.refresh_calls == 1
    assert len(set(world["echo"].auth)) == 1


async def test_many_rotations_under_concurrency_never_invalid_grant(aiohttp_client, world) -> None:
    front: IdPFront = world["front"]
    front.rotate_refresh_tokens = True
    front.refreshed_access_token_lifetime = 1
    _, at = await seed_grant(world["store"], front)
    settings = world["settings"].model_copy(update={"refresh_skew_seconds": 0, "token_cache_seconds": 0})
    client = await aiohttp_client(build_app(settings))
    cycles = 5
    for _ in range(cycles):
        statuses = await post_many(client.session, str(client.make_url("/mcp")), at, 20)
        assert statuses == [200] * 20
        await asyncio.sleep(1.1)  # let the 1 s upstream token expire
    assert front.refresh_rejections == 0
    assert cycles <= front.refresh_calls <= cycles + 1
    assert len(set(world["echo"].auth)) == front.refresh_calls  # every cycle used that cycle's fresh token


async def test_idp_down_is_503_grant_survives_and_next_request_succeeds(aiohttp_client, world) -> None:
    front: IdPFront = world["front"]
    gid, at = await seed_grant(world["store"], front)
    client = await aiohttp_client(build_app(world["settings"]))
    front.set_down("503")
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) > 0
    assert world["echo"].auth == []  # the expired upstream token was never sent
    assert (await world["store"].get_grant(gid)).upstream.refresh_token is not None
    front.set_up()
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 200
    assert front.refresh_rejections == 0


async def test_idp_revoked_refresh_token_means_401_reauthorize(aiohttp_client, world) -> None:
    front: IdPFront = world["front"]
    gid, at = await seed_grant(world["store"], front)
    front.revoke_refresh_tokens()
    client = await aiohttp_client(build_app(world["settings"]))
    resp = await client.post("/mcp", data=BODY, headers={**MCP, "Authorization": f"Bearer {at}"})
    assert resp.status == 401
    assert "re-authorization" in resp.headers["WWW-Authenticate"]
    grant = await world["store"].get_grant(gid)
    assert grant is not None and grant.upstream is None  # credentials dropped, grant kept


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    # Append-only file: a stop and restart keeps the data, as a real Redis with persistence would.
    server = start_server("--appendonly", "yes", "--appendfsync", "always")
    yield server
    server.cleanup()


async def test_redis_stopped_mid_run_is_503_then_service_resumes(aiohttp_client, idp_front, echo, own_redis) -> None:
    keys = new_keys()
    settings = broker_settings(idp_front, echo[1], own_redis.url, random_prefix(), keys, token_cache_seconds=0)
    store = open_store(settings, KeyRing.from_setting(keys))
    _, at = await seed_grant(store, idp_front, expired=False)
    await store.close()
    client = await aiohttp_client(build_app(settings))
    headers = {**MCP, "Authorization": f"Bearer {at}"}
    assert (await client.post("/mcp", data=BODY, headers=headers)).status == 200
    own_redis.stop()
    for _ in range(3):  # no crash, every request answered
        resp = await client.post("/mcp", data=BODY, headers=headers)
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["error"] == "temporarily_unavailable"
    ready = await client.get("/readyz")
    assert ready.status == 503
    own_redis.start()
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = (await client.post("/mcp", data=BODY, headers=headers)).status
        if status == 200:
            break
        await asyncio.sleep(0.2)
    assert status == 200
    assert (await client.get("/readyz")).status == 200
