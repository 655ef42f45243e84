"""``redis_min_replica_acks``: a rotated token is on a replica before the refresh returns (``WAIT``), so a failover
right after it cannot roll the rotation back; a replica that does not answer costs at most the ack timeout and is
logged and counted, never an error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store.base import TokenStore, UpstreamCredentials
from sidecar.store.redis import connect
from tests.support.redis_servers import (
    HAVE_REDIS,
    NO_REDIS_REASON,
    RedisClusterProcesses,
    RedisServer,
    random_prefix,
    start_cluster,
    start_server,
)
from tests.support.store_harness import CONTRACT_KEY, CONTRACT_KID

pytestmark = pytest.mark.redis
REDIS_TIMEOUT = 4.0  # the ack timeout is min(1 s, half of this)


def creds(tag: str) -> UpstreamCredentials:
    expires = time.time() + 3600
    return UpstreamCredentials(access_token=f"at-{tag}", refresh_token=f"rt-{tag}", access_expires_at=expires)


@pytest.fixture
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    master = start_server()
    replica = RedisServer("--replicaof", "127.0.0.1", str(master.port))
    try:
        replica.start()
        yield master, replica
    finally:
        if replica.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(replica.process.pid, signal.SIGCONT)
        replica.cleanup()
        master.cleanup()


async def wait_in_sync(replica: RedisServer) -> None:
    client = Redis(port=replica.port, decode_responses=True)
    try:
        deadline = time.monotonic() + 15
        while (await client.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_a_rotation_waits_for_the_replica(master_and_replica: tuple[RedisServer, RedisServer]) -> None:
    master, replica = master_and_replica
    await wait_in_sync(replica)
    timeouts: list[int] = []
    settings = Settings.model_validate(
        {"store": "redis", "redis_url": master.url, "key_prefix": random_prefix(),
         "redis_timeout_seconds": REDIS_TIMEOUT, "redis_min_replica_acks": 1}
    )  # fmt: skip
    assert settings.redis_min_replica_acks_effective == 1
    ring = KeyRing([(CONTRACT_KID, CONTRACT_KEY)])
    store = connect(settings, ring, on_replica_ack_timeout=lambda: timeouts.append(1))
    assert replica.process is not None
    try:
        grant = await store.create_grant(subject="u", client_id="c", scopes=[], claims={}, upstream=creds("0"))
        # The replica is frozen: the write lands on the master, the refresh waits for the acknowledgement.
        os.kill(replica.process.pid, signal.SIGSTOP)
        write = asyncio.create_task(store.compare_and_set_upstream(grant.grant_id, grant.generation, creds("1")))
        await asyncio.sleep(0.3)
        assert not write.done(), "the rotation returned before any replica held it"
        os.kill(replica.process.pid, signal.SIGCONT)
        assert await write is True
        assert timeouts == []
        # What the replica holds right now is the rotated credential: a failover now would keep it.
        on_replica = Redis(port=replica.port, decode_responses=True)
        on_master = Redis(port=master.port, decode_responses=True)
        try:
            keys = await on_master.keys(f"{settings.key_prefix}:*:grant")
            assert keys
            assert await on_replica.hgetall(keys[0]) == await on_master.hgetall(keys[0])
        finally:
            await on_replica.aclose()
            await on_master.aclose()

        # A replica that stays away: the write still succeeds, after at most the ack timeout, counted once.
        os.kill(replica.process.pid, signal.SIGSTOP)
        started = time.monotonic()
        current = await store.get_grant(grant.grant_id)
        assert current is not None
        assert await store.compare_and_set_upstream(grant.grant_id, current.generation, creds("2")) is True
        assert time.monotonic() - started < REDIS_TIMEOUT
        assert timeouts == [1]
        again = await store.get_grant(grant.grant_id)
        assert again is not None and again.upstream is not None and again.upstream.access_token == "at-2"
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
        await store.close()


def test_defaults_follow_the_deployment() -> None:
    base = {"store": "redis", "encryption_keys": None}
    assert Settings.model_validate({**base, "redis_mode": "standalone"}).redis_min_replica_acks_effective == 0
    assert Settings.model_validate({**base, "redis_mode": "sentinel"}).redis_min_replica_acks_effective == 1
    assert Settings.model_validate({**base, "redis_mode": "cluster"}).redis_min_replica_acks_effective == 1
    explicit = {**base, "redis_mode": "cluster", "redis_min_replica_acks": 0}
    assert Settings.model_validate(explicit).redis_min_replica_acks_effective == 0


@pytest.fixture
async def cluster_with_replicas() -> AsyncIterator[RedisClusterProcesses]:
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    cluster = await asyncio.to_thread(start_cluster, 3, replicas=1)
    try:
        yield cluster
    finally:
        for server in cluster.servers:
            if server.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.process.pid, signal.SIGCONT)
        cluster.cleanup()


async def replica_ports(cluster: RedisClusterProcesses) -> list[int]:
    ports = []
    for server in cluster.servers:
        client = Redis(port=server.port, decode_responses=True)
        try:
            info = await client.info("replication")
            if info["role"] == "slave" and info.get("master_link_status") == "up":
                ports.append(server.port)
        finally:
            await client.aclose()
    return ports


async def test_cluster_rotation_waits_on_the_grants_own_master(cluster_with_replicas: RedisClusterProcesses) -> None:
    cluster = cluster_with_replicas
    timeouts: list[int] = []
    settings = Settings.model_validate(
        {"store": "redis", "redis_mode": "cluster", "redis_cluster_nodes": cluster.nodes,
         "key_prefix": random_prefix(), "redis_timeout_seconds": REDIS_TIMEOUT}
    )  # fmt: skip
    store: TokenStore = connect(
        settings, KeyRing([(CONTRACT_KID, CONTRACT_KEY)]), on_replica_ack_timeout=lambda: timeouts.append(1)
    )
    try:
        deadline = time.monotonic() + 15
        while len(await replica_ports(cluster)) < 3:  # replicas attach a moment after the cluster is created
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        grants = [
            await store.create_grant(subject=f"u{i}", client_id="c", scopes=[], claims={}, upstream=creds("0"))
            for i in range(6)
        ]
        for grant in grants:  # grants on every master: each write is acknowledged by that master's replica
            assert await store.compare_and_set_upstream(grant.grant_id, grant.generation, creds("1")) is True
        assert timeouts == []
        frozen = [s for s in cluster.servers if s.port in await replica_ports(cluster)]
        for server in frozen:
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
        grant = grants[0]
        current = await store.get_grant(grant.grant_id)
        assert current is not None
        assert await store.compare_and_set_upstream(grant.grant_id, current.generation, creds("2")) is True
        assert timeouts == [1]
    finally:
        for server in cluster.servers:
            if server.process is not None:
                os.kill(server.process.pid, signal.SIGCONT)
        await store.close()
