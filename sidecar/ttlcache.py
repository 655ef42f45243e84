"""One small bounded cache with deadlines, for the in-process caches of the request path (DESIGN §13).

Entries live until a deadline on the caller's clock (``now`` is an argument: no clock of its own) and the
cache never holds more than ``max_entries``: when full, the oldest entry is dropped first. That bound is what
keeps a flood of distinct tokens from growing a worker's memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K, now: float = -math.inf) -> V | None:
        """The value, if present and ``now`` is before its deadline; a lapsed entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: K, value: V, until: float = math.inf) -> None:
        if key not in self._entries and len(self._entries) >= self._max:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (value, until)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        return iter(self._entries)
