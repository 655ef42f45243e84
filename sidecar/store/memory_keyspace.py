"""The memory store's tiny key-value engine: string, hash and sorted-set values with deadlines on the
injected clock, dropped when read and swept periodically (the in-process stand-in for Redis' keyspace)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.store.codecs import to_ms
from sidecar.store.records import Clock

# A full sweep of expired entries walks every record; doing it at most this often keeps its cost negligible
# while bounding how long dead records linger in memory.
SWEEP_INTERVAL_SECONDS: Final = 60.0

Value = str | dict[str, str] | dict[str, int]


@dataclass(slots=True)
class Entry:
    value: Value
    deadline_ms: int | None  # None: no expiry


class MemoryKeyspace:
    """Records by key, each with an optional deadline (epoch ms on ``clock``), like a Redis keyspace."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._data: dict[str, Entry] = {}
        self._next_sweep_ms = 0

    # --- the engine -------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return to_ms(self._clock())

    def _get(self, key: str, now_ms: int) -> Value | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.deadline_ms is not None and entry.deadline_ms <= now_ms:
            del self._data[key]
            return None
        return entry.value

    def _hash(self, key: str, now_ms: int) -> dict[str, str] | None:
        value = self._get(key, now_ms)
        if value is None:
            return None
        assert isinstance(value, dict)
        return value  # type: ignore[return-value]

    def _zset(self, key: str, now_ms: int) -> dict[str, int]:
        value = self._get(key, now_ms)
        if value is None:
            fresh: dict[str, int] = {}
            self._data[key] = Entry(fresh, None)
            return fresh
        assert isinstance(value, dict)
        return value  # type: ignore[return-value]

    def _string(self, key: str, now_ms: int) -> str | None:
        value = self._get(key, now_ms)
        assert value is None or isinstance(value, str)
        return value

    def _put(self, key: str, value: Value, deadline_ms: int | None, now_ms: int) -> None:
        self._data[key] = Entry(value, deadline_ms)
        self._maybe_sweep(now_ms)

    def _expire(self, key: str, deadline_ms: int) -> None:
        entry = self._data.get(key)
        if entry is not None:
            entry.deadline_ms = deadline_ms

    def _maybe_sweep(self, now_ms: int) -> None:
        if now_ms < self._next_sweep_ms:
            return
        self._next_sweep_ms = now_ms + to_ms(SWEEP_INTERVAL_SECONDS)
        dead = [k for k, e in self._data.items() if e.deadline_ms is not None and e.deadline_ms <= now_ms]
        for key in dead:
            del self._data[key]

    # --- for tests: the raw records, exactly as a Redis dump would show them ---

    def raw_items(self) -> dict[str, Value]:
        now_ms = self._now_ms()
        return {k: e.value for k, e in self._data.items() if e.deadline_ms is None or e.deadline_ms > now_ms}

    def raw_deadline_ms(self, key: str) -> int | None:
        entry = self._data.get(key)
        return None if entry is None else entry.deadline_ms
