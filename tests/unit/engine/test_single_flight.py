"""Cache misses under concurrency: one store call for everyone, never one per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.broker import BrokerAuthenticator
from sidecar.crypto import KeyRing
from sidecar.metrics import Metrics
from sidecar.refresh import CredentialBroker
from sidecar.singleflight import SingleFlight
from sidecar.store.base import UpstreamCredentials, mint_access_token
from sidecar.store.memory import MemoryTokenStore
from tests.support.fake_idp import ScriptedIdP


class Counting:
    """Wraps a store and counts (and slows) the calls the request path makes."""

    def __init__(self, store: MemoryTokenStore) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            await asyncio.sleep(0.01)  # a store round trip: long enough for the others to pile up
            return await real(*args, **kwargs)

        return counted


async def test_cold_cache_hundred_requests_one_lookup_and_one_grant_read() -> None:
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="sf")
    grant = await store.create_grant(
        subject="u1", client_id="c1", scopes=[], claims={},
        upstream=UpstreamCredentials(access_token="up", access_expires_at=time.time() + 3600),
    )  # fmt: skip
    token = mint_access_token(grant.grant_id)
    await store.issue_tokens(grant.grant_id, access_token=token, refresh_token=None, access_ttl=3600, refresh_ttl=60)
    counting = Counting(store)
    auth = BrokerAuthenticator(store=counting, metrics=Metrics(), cache_seconds=2)  # type: ignore[arg-type]
    creds = CredentialBroker(
        store=counting, idp=ScriptedIdP(), metrics=Metrics(), skew=60, lock_seconds=5, cache_seconds=2  # type: ignore[arg-type]
    )

    async def request() -> str:
        identity = await auth.authenticate(f"Bearer {token}", time.time())
        assert identity.grant_id is not None
        return (await creds.current(identity.grant_id)).upstream.access_token  # type: ignore[union-attr]

    assert await asyncio.gather(*(request() for _ in range(100))) == ["up"] * 100
    assert counting.calls == {"find_access_token": 1, "get_grant": 1}


async def test_an_error_reaches_every_waiter_and_the_next_call_tries_again() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("store down")

    results = await asyncio.gather(*(flights.do("k", failing) for _ in range(10)), return_exceptions=True)
    assert calls == 1 and all(isinstance(r, RuntimeError) for r in results)
    with pytest.raises(RuntimeError):
        await flights.do("k", failing)
    assert calls == 2 and len(flights) == 0


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def slow() -> int:
        await asyncio.sleep(0.05)
        return 7

    first = asyncio.ensure_future(flights.do("k", slow))
    second = asyncio.ensure_future(flights.do("k", slow))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == 7
