"""``mcp-auth-sidecar grants|clients`` on real Redis, run as the operator would (a separate process with the
pod's configuration): a revoked user's token stops working on two replicas within the cache window, the upstream
refresh token is revoked at the IdP (RFC 7009), and the audit trail records who was revoked and by whom."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import TokenStore, UpstreamCredentials, mint_access_token, mint_refresh_token
from tests.integration.broker.test_broker_redis import BODY, MCP, broker_settings, echo, new_keys  # noqa: F401
from tests.support.oidc import IdPFront
from tests.support.redis_servers import random_prefix

pytestmark = pytest.mark.redis

CACHE_SECONDS = 1.0
CLI_TIMEOUT_SECONDS = 60.0


async def cli(config: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_SECONDS)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode is not None
    return proc.returncode, lines, err.decode()


async def seed(store: TokenStore, front: IdPFront, sub: str, client_id: str) -> tuple[str, str, str]:
    issued = await front.obtain_tokens(sub=sub)
    grant = await store.create_grant(
        subject=sub, client_id=client_id, scopes=["openid"], claims={"sub": sub},
        upstream=UpstreamCredentials(access_token=issued.access_token, refresh_token=issued.refresh_token,
                                     id_token=issued.id_token, access_expires_at=time.time() + 3600),
    )  # fmt: skip
    at = mint_access_token(grant.grant_id)
    await store.issue_tokens(grant.grant_id, access_token=at, refresh_token=mint_refresh_token(grant.grant_id),
                             access_ttl=3600, refresh_ttl=86400)  # fmt: skip
    assert issued.refresh_token is not None
    return grant.grant_id, at, issued.refresh_token


async def status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    async with session.post(url, data=BODY, headers={**MCP, "Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status


async def test_revoke_a_user_on_two_replicas_and_at_the_idp(
    idp_front: IdPFront, echo: Any, redis_url: str, aiohttp_client: Any, tmp_path: Path  # noqa: F811
) -> None:
    prefix, keys = random_prefix(), new_keys()
    backend: TestServer = echo[1]
    settings = broker_settings(idp_front, backend, redis_url, prefix, keys, token_cache_seconds=CACHE_SECONDS)
    idp_front.discovery_overrides["revocation_endpoint"] = idp_front.revocation_endpoint
    audit = tmp_path / "audit.log"
    config = tmp_path / "sidecar.yaml"
    values = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in settings.model_dump(exclude_defaults=True).items()}  # fmt: skip
    config.write_text(yaml.safe_dump({**values, "audit_log": str(audit)}))
    store = open_store(settings, KeyRing.from_setting(keys))
    try:
        gid, alice, alice_rt = await seed(store, idp_front, "alice@example.com", "client-1")
        _, bob, _ = await seed(store, idp_front, "bob@example.com", "client-1")
        replicas = [await aiohttp_client(build_app(Settings.model_validate(settings.model_dump()))) for _ in range(2)]
        async with aiohttp.ClientSession() as http:
            urls = [str(r.make_url("/mcp")) for r in replicas]
            assert [await status(http, u, t) for u in urls for t in (alice, bob)] == [200, 200, 200, 200]

            code, listed, err = await cli(config, "grants", "list", "--sub", "alice@example.com")
            assert code == 0, err
            assert [(g["grant"], g["sub"], g["client"], g["scopes"]) for g in listed] == [
                (gid, "alice@example.com", "client-1", ["openid"])]
            assert listed[0]["created"] and listed[0]["last_used"] and listed[0]["upstream_expiry"]
            assert alice not in json.dumps(listed) and alice_rt not in json.dumps(listed)
            code, everyone, _ = await cli(config, "grants", "list", "--client", "client-1")
            assert code == 0 and len(everyone) == 2

            code, revoked, err = await cli(config, "grants", "revoke", "--sub", "alice@example.com")
            revoked_at = time.monotonic()
            assert code == 0, err
            assert revoked == [{"grant": gid, "sub": "alice@example.com", "client": "client-1", "revoked": True,
                                "upstream_refresh_token": "revoked"}]  # fmt: skip
            assert idp_front.revoked == [alice_rt]  # RFC 7009 at the IdP, with the sidecar's client credentials

            # Every replica refuses the token once its in-process cache entry lapses; bob is untouched.
            while True:
                answers = [await status(http, u, alice) for u in urls]
                if answers == [401, 401]:
                    break
                assert time.monotonic() - revoked_at < CACHE_SECONDS + 1.0, answers
                await asyncio.sleep(0.05)
            assert [await status(http, u, bob) for u in urls] == [200, 200]
            code, _, err = await cli(config, "grants", "revoke", "--grant", gid)
            assert code == 1 and "no grant matched" in err
    finally:
        await store.close()
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "admin.revoke"]
    assert (event["grant"], event["sub"], event["client_id"], event["outcome"]) == (
        gid, "alice@example.com", "client-1", "revoked")
    assert event["actor"]
    assert alice not in audit.read_text() and alice_rt not in audit.read_text()


async def test_clients_list_and_delete(idp_front: IdPFront, echo: Any, redis_url: str, tmp_path: Path) -> None:  # noqa: F811
    prefix, keys = random_prefix(), new_keys()
    settings = broker_settings(idp_front, echo[1], redis_url, prefix, keys)
    config = tmp_path / "sidecar.yaml"
    values = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in settings.model_dump(exclude_defaults=True).items()}  # fmt: skip
    config.write_text(yaml.safe_dump(values))
    store = open_store(settings, KeyRing.from_setting(keys))
    try:
        await store.put_client("mcpc_one", {"client_name": "One", "redirect_uris": ["http://127.0.0.1:1/cb"],
                                            "client_secret_sha256": "deadbeef"})  # fmt: skip
        await store.put_client("mcpc_two", {"client_name": "Two", "redirect_uris": ["http://127.0.0.1:2/cb"]})
        gid, _, _ = await seed(store, idp_front, "carol@example.com", "mcpc_one")
        code, listed, err = await cli(config, "clients", "list")
        assert code == 0, err
        assert sorted((c["client_id"], c["client_name"]) for c in listed) == [("mcpc_one", "One"), ("mcpc_two", "Two")]
        assert "deadbeef" not in json.dumps(listed)
        code, out, err = await cli(config, "clients", "delete", "mcpc_one")
        assert code == 0, err
        assert out[-1] == {"client_id": "mcpc_one", "deleted": True}
        assert await store.get_client("mcpc_one") is None
        assert await store.get_grant(gid) is None  # its grants go with it
        assert await store.get_client("mcpc_two") is not None
        code, _, err = await cli(config, "clients", "delete", "mcpc_one")
        assert code == 1 and "no such client" in err
    finally:
        await store.close()


async def test_admin_commands_refuse_the_memory_store(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "mode": "broker", "upstream": "http://127.0.0.1:9", "public_url": "https://m.example",
        "idp_issuer": "https://idp.example", "idp_client_id": "c", "idp_client_secret": "s",
    }))  # fmt: skip
    code, _, err = await cli(config, "grants", "list")
    assert code == 2 and "store: redis" in err
