"""Single-flight: concurrent callers asking for the same key share one in-progress call.

Used wherever many requests can miss a cache at the same moment (a grant's refresh, a token lookup or a
grant read when the short in-process cache lapses): one call goes to the store or the IdP, everyone else
waits for its result. A caller that is cancelled (its client went away) does not cancel the shared call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        flight = self._calls.get(key)
        if flight is None:
            flight = asyncio.ensure_future(call())
            self._calls[key] = flight
            flight.add_done_callback(lambda f: self._finished(key, f))
        return await asyncio.shield(flight)

    def _finished(self, key: K, flight: asyncio.Future[V]) -> None:
        if self._calls.get(key) is flight:
            del self._calls[key]
        if not flight.cancelled():
            flight.exception()  # retrieved: no "never retrieved" warning when every waiter went away
