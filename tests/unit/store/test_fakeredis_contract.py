"""The store contract suites (one per protocol) on the Redis store over fakeredis (Lua runs in fakeredis' Lua 5.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from sidecar.store.base import StoreUnavailable
from tests.support.store_contract import backend_suites
from tests.support.store_harness import Harness, every_operation, redis_harness


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Harness, fakeredis.FakeServer]]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    raw = fakeredis.FakeAsyncRedis(server=server)
    harness, _ = redis_harness(client, [raw])
    yield harness, server
    await client.aclose()
    await raw.aclose()


class FakeRedisBackend:
    @pytest.fixture
    def h(self, fake: tuple[Harness, fakeredis.FakeServer]) -> Harness:
        return fake[0]


globals().update(backend_suites(FakeRedisBackend, "FakeRedis"))


async def test_every_operation_reports_store_unavailable_when_redis_is_down(
    fake: tuple[Harness, fakeredis.FakeServer],
) -> None:
    h, server = fake
    ops = await every_operation(h)
    server.connected = False
    for name, op in ops:
        with pytest.raises(StoreUnavailable) as info:
            await op()
        assert name in str(info.value)
        assert "secret" not in str(info.value).lower()
    server.connected = True
    for _name, op in ops:
        await op()
