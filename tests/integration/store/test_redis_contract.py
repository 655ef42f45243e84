"""The store contract suites (one per protocol) against a real redis-server, the same behind a Sentinel, and a
real 3-master Redis Cluster (DESIGN §5).

The clients are built by the product's own factory (:func:`sidecar.store.redis.build_client`) from Settings,
so the standalone URL, Sentinel and cluster seed-node paths are exercised too. Every test uses a random key prefix and
deletes only its own keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sidecar.config import Settings
from sidecar.store.redis import build_client
from tests.support.redis_servers import RedisClusterProcesses, RedisSentinelProcesses, random_prefix
from tests.support.store_contract import backend_suites
from tests.support.store_harness import Harness, redis_harness

pytestmark = pytest.mark.redis


def standalone_settings(url: str) -> Settings:
    return Settings.model_validate({"store": "redis", "redis_url": url, "key_prefix": random_prefix()})


def cluster_settings(nodes: list[str]) -> Settings:
    return Settings.model_validate(
        {"store": "redis", "redis_mode": "cluster", "redis_cluster_nodes": nodes, "key_prefix": random_prefix()}
    )


class RealRedisBackend:
    @pytest.fixture
    async def h(self, redis_url: str) -> AsyncIterator[Harness]:
        settings = standalone_settings(redis_url)
        client = build_client(settings)
        raw_node = Redis.from_url(redis_url)
        harness, raw = redis_harness(client, [raw_node], prefix=settings.key_prefix)
        try:
            yield harness
        finally:
            await raw.delete_all()
            await harness.store.close()
            await raw_node.aclose()


class RedisSentinelBackend:
    @pytest.fixture
    async def h(self, redis_sentinel: RedisSentinelProcesses) -> AsyncIterator[Harness]:
        settings = Settings.model_validate(
            {
                "store": "redis",
                "redis_mode": "sentinel",
                "redis_sentinels": redis_sentinel.sentinels,
                "redis_sentinel_master": redis_sentinel.MASTER_NAME,
                "key_prefix": random_prefix(),
            }
        )
        client = build_client(settings)
        raw_node = Redis.from_url(redis_sentinel.master.url)
        harness, raw = redis_harness(client, [raw_node], prefix=settings.key_prefix)
        try:
            yield harness
        finally:
            await raw.delete_all()
            await harness.store.close()
            await raw_node.aclose()


class RedisClusterBackend:
    @pytest.fixture
    async def h(self, redis_cluster: RedisClusterProcesses) -> AsyncIterator[Harness]:
        settings = cluster_settings(redis_cluster.nodes)
        client = build_client(settings)
        nodes = [Redis(host="127.0.0.1", port=s.port) for s in redis_cluster.servers]
        harness, raw = redis_harness(client, nodes, prefix=settings.key_prefix)
        try:
            yield harness
        finally:
            await raw.delete_all()
            await harness.store.close()
            for node in nodes:
                await node.aclose()


globals().update(backend_suites(RealRedisBackend, "RealRedis"))
globals().update(backend_suites(RedisSentinelBackend, "RedisSentinel"))
globals().update(backend_suites(RedisClusterBackend, "RedisCluster"))


async def test_cluster_spreads_grants_over_masters(redis_cluster: RedisClusterProcesses) -> None:
    """Sanity check that the cluster run is a real multi-master one: grants land on every master."""
    settings = cluster_settings(redis_cluster.nodes)
    client = build_client(settings)
    nodes = [Redis(host="127.0.0.1", port=s.port) for s in redis_cluster.servers]
    harness, raw = redis_harness(client, nodes, prefix=settings.key_prefix)
    try:
        for _ in range(30):
            await harness.store.create_grant(subject="s", client_id="c", scopes=[], claims={}, upstream=None)
        per_node = [len([k async for k in node.scan_iter(match=f"{settings.key_prefix}:*")]) for node in nodes]
        assert all(count > 0 for count in per_node), per_node
    finally:
        await raw.delete_all()
        await client.aclose()
        for node in nodes:
            await node.aclose()
