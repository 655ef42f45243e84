"""Redis failing over under load, right after upstream refresh tokens were rotated: a Sentinel deployment (master,
replica, three Sentinels) whose master is killed, and a Redis Cluster (3 masters + 3 replicas) that loses a master.

What clients may see: 503 + Retry-After while the switch lasts, nothing else. What must not happen: a rotation
rolled back by the promoted replica (the IdP would see the rotated-away refresh token again and revoke the family),
a 401 (a grant lost), a 5xx other than 503."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from tests.reliability.harness import Sidecar, Tally, load, record
from tests.reliability.services import BackendProcess, RotatingIdP, broker_env, new_keys, seed_grants
from tests.support.redis_servers import (
    HAVE_REDIS,
    NO_REDIS_REASON,
    RedisServer,
    random_prefix,
    start_cluster,
    start_replicated_sentinel,
)

pytestmark = pytest.mark.redis
GRANTS = 30
# Upstream access tokens live this long: under load every grant rotates its refresh token every few seconds, so
# rotations happen right before the kill and again after the switch (each one presenting what Redis kept).
TOKEN_LIFETIME = 2.0
# How long the load runs on after the kill: the switch (about 2 s here) and two token lifetimes after it.
AFTER_KILL_SECONDS = 8.0
SWITCH_BOUND_SECONDS = 6.0  # every failed request falls within this long after the kill


@dataclass
class Deployment:
    settings: dict[str, object]  # the redis_* settings of this deployment
    victim: RedisServer  # the master to kill
    cleanup: object


@pytest.fixture
async def sentinel_deployment() -> AsyncIterator[Deployment]:
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    group = await asyncio.to_thread(start_replicated_sentinel)
    try:
        await wait_replicas_in_sync([group.replica.port])
        yield Deployment(
            {"redis_mode": "sentinel", "redis_sentinels": ",".join(group.sentinels),
             "redis_sentinel_master": group.MASTER_NAME},
            group.master, group.cleanup,
        )  # fmt: skip
    finally:
        group.cleanup()


@pytest.fixture
async def cluster_deployment() -> AsyncIterator[Deployment]:
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    cluster = await asyncio.to_thread(start_cluster, 3, replicas=1, node_timeout_ms=1000)
    try:
        roles = {s.port: await role(s.port) for s in cluster.servers}
        replicas = [p for p, r in roles.items() if r == "slave"]
        await wait_replicas_in_sync(replicas)
        victim = next(s for s in cluster.servers if roles[s.port] == "master")
        yield Deployment({"redis_mode": "cluster", "redis_cluster_nodes": ",".join(cluster.nodes)}, victim,
                         cluster.cleanup)  # fmt: skip
    finally:
        cluster.cleanup()


async def role(port: int) -> str:
    client = Redis(port=port, decode_responses=True)
    try:
        return str((await client.info("replication"))["role"])
    finally:
        await client.aclose()


async def wait_replicas_in_sync(ports: list[int]) -> None:
    deadline = time.monotonic() + 20
    for port in ports:
        client = Redis(port=port, decode_responses=True)
        try:
            while (await client.info("replication")).get("master_link_status") != "up":
                assert time.monotonic() < deadline, f"replica {port} did not sync"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()


async def run_failover(tmp_path: Path, deployment: Deployment, name: str) -> None:
    idp = await RotatingIdP(lifetime=TOKEN_LIFETIME).start()
    backend = BackendProcess()
    await backend.start()
    keys, prefix = new_keys(), random_prefix()
    redis_settings = {k: v for k, v in deployment.settings.items()}
    # The refresh lock (8 s) outlasts the switch: a rotated token is written through it (ROTATED_WRITE_RETRY_SECONDS).
    env = broker_env(idp, keys, prefix, refresh_skew_seconds=0, redis_timeout_seconds=1, idp_timeout_seconds=2,
                     refresh_lock_seconds=8, **redis_settings)  # fmt: skip
    settings = Settings.model_validate({"store": "redis", "key_prefix": prefix, **redis_settings})
    store = open_store(settings, KeyRing.from_setting(keys))
    sidecar = Sidecar(backend.url, env, log_dir=tmp_path)
    tally = Tally()
    failures: list[tuple[float, int, bool]] = []  # (when, status, Retry-After present)
    try:
        tokens = await seed_grants(store, idp, GRANTS)
        await store.close()
        sidecar.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await sidecar.ready(session)

            async def send(s: aiohttp.ClientSession) -> tuple[int, Mapping[str, str]]:
                token = random.choice(tokens)
                async with s.post(sidecar.base + "/mcp", data=b"{}", headers={"Authorization": f"Bearer {token}"}) as r:
                    await r.read()
                    if r.status != 200:
                        failures.append((time.monotonic(), r.status, r.headers.get("Retry-After", "").isdigit()))
                    return r.status, r.headers

            stop = asyncio.Event()
            clients = asyncio.create_task(load(session, send, stop, concurrency=8, tally=tally))
            deadline = time.monotonic() + 30
            while idp.rotations < 2 * GRANTS:  # every grant has rotated (about twice) under load
                assert time.monotonic() < deadline, (idp.rotations, tally.summary(), sidecar.log_text())
                await asyncio.sleep(0.05)
            before = idp.rotations
            while idp.rotations == before:  # the kill comes right after a rotation
                await asyncio.sleep(0.001)
            killed = time.monotonic()
            rotations_at_kill = idp.rotations
            assert deployment.victim.process is not None
            deployment.victim.process.kill()
            await asyncio.sleep(AFTER_KILL_SECONDS)
            stop.set()
            await clients
            rotations_after = idp.rotations - rotations_at_kill
            # Afterwards every grant works, with the token Redis kept.
            for token in tokens:
                for _ in range(20):
                    async with session.post(sidecar.base + "/mcp", data=b"{}",
                                            headers={"Authorization": f"Bearer {token}"}) as r:  # fmt: skip
                        if r.status == 200:
                            break
                        assert r.status == 503, (r.status, await r.text())
                    await asyncio.sleep(0.25)
                else:
                    raise AssertionError(f"a grant never recovered: {sidecar.log_text()}")
    finally:
        sidecar.kill()
        backend.kill()
        await idp.close()
        with contextlib.suppress(Exception):
            await store.close()
    statuses = set(tally.statuses)
    assert statuses <= {"200", "503"}, tally.summary()  # no 401 (grant lost), no 500/502
    assert all(has_retry_after for _, _, has_retry_after in failures)
    late = [round(at - killed, 2) for at, _, _ in failures if not killed <= at <= killed + SWITCH_BOUND_SECONDS]
    assert not late, late
    assert idp.reuse_detected == 0 and idp.lost_families() == 0  # no rotation was rolled back
    assert rotations_after >= GRANTS  # every grant rotated again after the switch, from what Redis kept
    recover = (tally.last_failure - killed) if tally.last_failure else 0.0
    failed = tally.failed()
    record(name, saw=f"503 + Retry-After during the switch ({failed}), otherwise 200", failed=failed,
           total=tally.total, grants_lost=0, recover_seconds=recover)  # fmt: skip
    print(f"{name}: {tally.summary()}, last failure {recover:.2f} s after the kill, "
          f"{rotations_after} rotations after it")


async def test_sentinel_failover_after_rotation(tmp_path: Path, sentinel_deployment: Deployment) -> None:
    await run_failover(tmp_path, sentinel_deployment,
                       "Redis Sentinel: master killed right after a rotation, under load (1 replica, 3 Sentinels)")


async def test_cluster_master_killed_after_rotation(tmp_path: Path, cluster_deployment: Deployment) -> None:
    await run_failover(tmp_path, cluster_deployment,
                       "Redis Cluster (3 masters + 3 replicas): a master killed right after a rotation, under load")
