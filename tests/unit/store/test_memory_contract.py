"""The store contract suites (one per protocol) on the in-process memory store."""

from __future__ import annotations

import pytest

from sidecar.store.memory import SWEEP_INTERVAL_SECONDS
from tests.support.store_contract import backend_suites
from tests.support.store_harness import GRACE_SECONDS, Harness, memory_harness, new_grant


class MemoryBackend:
    @pytest.fixture
    def h(self) -> Harness:
        return memory_harness()


globals().update(backend_suites(MemoryBackend, "Memory"))


async def test_expired_records_are_swept() -> None:
    h = memory_harness()
    for _ in range(5):
        await new_grant(h, upstream=None)
    await h.store.put_code("c", {"n": 1})
    assert len(await h.raw.keys()) == 6
    h.clock.advance(max(GRACE_SECONDS, SWEEP_INTERVAL_SECONDS) + 1)
    await h.store.put_client("c1", {"client_id": "c1"})  # any write may sweep
    # What is left: the new registration and the registry of live registrations (the global cap).
    assert sorted(h.store.raw_items()) == ["mcpsc:client:c1", "mcpsc:clients"]  # type: ignore[attr-defined]
    assert len(h.store._data) == 2  # type: ignore[attr-defined]
