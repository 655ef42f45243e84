"""Redis going away mid-run: every store operation fails with StoreUnavailable and nothing else, and the
store works again once Redis is back (DESIGN §4: "store (Redis) unreachable in broker mode -> 503")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import StoreUnavailable, TokenStore
from sidecar.store.redis import RedisTokenStore
from tests.support.redis_servers import RedisClusterProcesses, RedisServer, random_prefix, start_cluster
from tests.support.store_harness import (
    CONTRACT_KEY,
    CONTRACT_KID,
    FakeClock,
    Harness,
    RedisRawView,
    every_operation,
    new_grant,
)

pytestmark = pytest.mark.redis

# Short on purpose: a stopped loopback server refuses at once; this only bounds a hung socket in the test.
TEST_REDIS_TIMEOUT_SECONDS = 1.0
# How long a restarted cluster node may take until every slot answers again.
CLUSTER_RECOVERY_SECONDS = 20.0


def _harness(store: TokenStore, clock: FakeClock, prefix: str) -> Harness:
    async def same(_ring: KeyRing) -> TokenStore:
        return store

    assert isinstance(store, RedisTokenStore)
    raw = RedisRawView(store.client, [], prefix)
    return Harness(store, clock, KeyRing([(CONTRACT_KID, CONTRACT_KEY)]), prefix, raw, same)


@pytest.fixture
async def standalone(redis_server: RedisServer) -> AsyncIterator[tuple[Harness, RedisServer]]:
    prefix = random_prefix()
    settings = Settings.model_validate(
        {"store": "redis", "redis_url": redis_server.url, "key_prefix": prefix,
         "redis_timeout_seconds": TEST_REDIS_TIMEOUT_SECONDS, "encryption_keys": "k-old:" + "B" * 43}
    )  # fmt: skip
    clock = FakeClock()
    store = open_store(settings, KeyRing([(CONTRACT_KID, CONTRACT_KEY)]), clock=clock)
    yield _harness(store, clock, prefix), redis_server
    with contextlib.suppress(StoreUnavailable):
        await store.close()


async def test_stopped_redis_gives_store_unavailable_then_recovers(
    standalone: tuple[Harness, RedisServer],
) -> None:
    h, server = standalone
    ops = await every_operation(h)
    server.stop()
    for name, op in ops:
        try:
            await op()
        except StoreUnavailable as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{name} did not fail while Redis was down")
    server.start()  # same port; the data is gone (no persistence in tests), the connections are not
    for _name, op in ops:
        await op()
    await h.store.ping()
    assert (await new_grant(h)).generation == 1


async def test_redis_stopped_while_requests_are_in_flight(standalone: tuple[Harness, RedisServer]) -> None:
    h, server = standalone
    ops = await every_operation(h)
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def hammer(worker: int) -> None:
        i = worker
        while not stop.is_set():
            try:
                await ops[i % len(ops)][1]()
            except BaseException as exc:  # the point is to see every type
                failures.append(exc)
            i += 1
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(hammer(w)) for w in range(8)]
    await asyncio.sleep(0.2)
    server.stop()
    await asyncio.sleep(0.3)
    server.start()
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks)
    assert failures, "the outage went unnoticed"
    assert all(isinstance(exc, StoreUnavailable) for exc in failures), {type(e).__name__ for e in failures}
    for _name, op in ops:
        await op()


@pytest.fixture
async def own_cluster() -> AsyncIterator[RedisClusterProcesses]:
    from tests.support.redis_servers import HAVE_REDIS, NO_REDIS_REASON

    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    cluster = await asyncio.to_thread(start_cluster)
    try:
        yield cluster
    finally:
        cluster.cleanup()


async def test_cluster_master_down_gives_store_unavailable_then_recovers(
    own_cluster: RedisClusterProcesses,
) -> None:
    prefix = random_prefix()
    settings = Settings.model_validate(
        {"store": "redis", "redis_mode": "cluster", "redis_cluster_nodes": own_cluster.nodes,
         "key_prefix": prefix, "redis_timeout_seconds": TEST_REDIS_TIMEOUT_SECONDS}
    )  # fmt: skip
    clock = FakeClock()
    store = open_store(settings, KeyRing([(CONTRACT_KID, CONTRACT_KEY)]), clock=clock)
    h = _harness(store, clock, prefix)
    try:
        # Several grants so that some live on the master we stop.
        op_sets = [await every_operation(h) for _ in range(4)]
        victim = own_cluster.servers[0]
        victim.stop()
        failed = 0
        for ops in op_sets:
            for name, op in ops:
                try:
                    await op()
                except StoreUnavailable as exc:
                    assert name in str(exc)
                    failed += 1
        assert failed > 0
        victim.start()  # rejoins with its nodes.conf and its slots
        deadline = asyncio.get_running_loop().time() + CLUSTER_RECOVERY_SECONDS
        while True:
            try:
                for ops in op_sets:
                    for _name, op in ops:
                        await op()
                break
            except StoreUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()
