"""Get-or-refresh of upstream credentials (DESIGN §7) against the memory store and a scripted IdP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.challenge import InvalidToken, ServiceUnavailable
from sidecar.crypto import KeyRing
from sidecar.idp import IdPRejected, IdPUnavailable
from sidecar.metrics import Metrics
from sidecar.refresh import CredentialBroker, cache_deadline, needs_refresh, usable
from sidecar.store.base import UpstreamCredentials
from sidecar.store.memory import MemoryTokenStore
from tests.support.fake_idp import ScriptedIdP

NOW = 1_800_000_000.0


def creds(access_exp: float | None, *, refresh: str | None = "up-rt-0", access: str | None = "up-at-0"):
    return UpstreamCredentials(access_token=access, refresh_token=refresh, access_expires_at=access_exp)


@pytest.mark.parametrize(
    ("access_exp", "now", "skew", "expected"),
    [
        (NOW + 3600, NOW, 60, False),
        (NOW + 61, NOW, 60, False),
        (NOW + 60, NOW, 60, True),  # exactly at the skew boundary: refresh
        (NOW + 10, NOW, 60, True),
        (NOW - 1, NOW, 60, True),
        (None, NOW, 60, False),  # unknown expiry: nothing to go by
        (NOW + 1, NOW, 0, False),
    ],
)
def test_needs_refresh(access_exp: float | None, now: float, skew: float, expected: bool) -> None:
    assert needs_refresh(creds(access_exp), now, skew) is expected


def test_missing_access_token_needs_refresh_and_is_not_usable() -> None:
    c = creds(NOW + 3600, access=None)
    assert needs_refresh(c, NOW, 60)
    assert not usable(c, NOW)


def test_usable_until_the_exact_expiry_and_never_after() -> None:
    assert usable(creds(NOW + 1), NOW)
    assert not usable(creds(NOW), NOW)
    assert not usable(creds(NOW - 5), NOW)


def test_cache_never_outlives_expiry_minus_skew() -> None:
    assert cache_deadline(creds(NOW + 3600), NOW, 2, 60) == NOW + 2
    assert cache_deadline(creds(NOW + 61), NOW, 2, 60) == NOW + 1
    assert cache_deadline(creds(NOW + 30), NOW, 2, 60) < NOW


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="unit")


def broker(store: MemoryTokenStore, idp: ScriptedIdP, metrics: Metrics | None = None, **kw: Any) -> CredentialBroker:
    return CredentialBroker(
        store=store,
        idp=idp,
        metrics=metrics or Metrics(),
        skew=kw.pop("skew", 60),
        lock_seconds=kw.pop("lock_seconds", 5),
        cache_seconds=kw.pop("cache_seconds", 2),
        **kw,
    )


async def expired_grant(store: MemoryTokenStore, *, refresh: str | None = "up-rt-0", exp_in: float = -10):
    return await store.create_grant(
        subject="u1",
        client_id="c1",
        scopes=["openid"],
        claims={"sub": "u1", "email": "u1@example.com"},
        upstream=creds(time.time() + exp_in, refresh=refresh),
    )


async def test_hundred_concurrent_requests_on_an_expired_grant_refresh_exactly_once(store) -> None:
    idp = ScriptedIdP()
    idp.delay = 0.05
    grant = await expired_grant(store)
    b = broker(store, idp)
    results = await asyncio.gather(*(b.current(grant.grant_id) for _ in range(100)))
    assert idp.calls == 1
    assert {r.upstream.access_token for r in results} == {"up-at-1"}
    stored = await store.get_grant(grant.grant_id)
    assert stored.upstream.access_token == "up-at-1"
    assert stored.upstream.refresh_token == "up-rt-1"
    assert stored.generation == grant.generation + 1


async def test_two_replicas_sharing_a_store_refresh_exactly_once(store) -> None:
    """Two brokers (two replicas' worth of single-flight) meet at the store's lock: one refresh."""
    idp = ScriptedIdP()
    idp.delay = 0.2
    grant = await expired_grant(store)
    metrics_b = Metrics()
    a, b = broker(store, idp), broker(store, idp, metrics_b)
    results = await asyncio.gather(*(x.current(grant.grant_id) for x in [a, b] * 20))
    assert idp.calls == 1
    assert {r.upstream.access_token for r in results} == {"up-at-1"}
    assert metrics_b.lock_waits._value.get() == 1 or metrics_b.upstream_refreshes.labels("adopted")._value.get() >= 1


async def test_old_refresh_token_kept_when_idp_returns_none(store) -> None:
    idp = ScriptedIdP()
    idp.rotate = False
    grant = await expired_grant(store, refresh="keep-me")
    await broker(store, idp).current(grant.grant_id)
    stored = await store.get_grant(grant.grant_id)
    assert stored.upstream.access_token == "up-at-1"
    assert stored.upstream.refresh_token == "keep-me"


async def test_invalid_grant_drops_credentials_and_asks_to_reauthorize(store) -> None:
    idp = ScriptedIdP()
    idp.fail = IdPRejected("invalid_grant", "token revoked")
    grant = await expired_grant(store)
    with pytest.raises(InvalidToken) as err:
        await broker(store, idp).current(grant.grant_id)
    assert err.value.status == 401
    assert "re-authorization" in err.value.description
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and stored.upstream is None  # grant kept, credentials gone
    # and the next request does not call the IdP again: it is told to re-authorize straight away
    with pytest.raises(InvalidToken):
        await broker(store, idp).current(grant.grant_id)
    assert idp.calls == 1


async def test_idp_down_with_expired_token_is_503_and_grant_survives(store) -> None:
    idp = ScriptedIdP()
    idp.fail = IdPUnavailable("connection refused")
    grant = await expired_grant(store)
    b = broker(store, idp)
    with pytest.raises(ServiceUnavailable) as err:
        await b.current(grant.grant_id)
    assert err.value.status == 503
    assert int(err.value.extra_headers["Retry-After"]) > 0
    stored = await store.get_grant(grant.grant_id)
    assert stored.upstream.refresh_token == "up-rt-0" and stored.generation == grant.generation
    idp.fail = None  # the IdP is back: the next request succeeds
    again = await b.current(grant.grant_id)
    assert again.upstream.access_token == "up-at-2"


async def test_idp_down_with_a_still_valid_token_forwards_the_current_one(store) -> None:
    idp = ScriptedIdP()
    idp.fail = IdPUnavailable("timeout")
    grant = await expired_grant(store, exp_in=30)  # inside the 60 s skew, not yet expired
    got = await broker(store, idp).current(grant.grant_id)
    assert got.upstream.access_token == "up-at-0"


async def test_expired_token_without_refresh_token_is_401_not_forwarded(store) -> None:
    idp = ScriptedIdP()
    grant = await expired_grant(store, refresh=None)
    with pytest.raises(InvalidToken):
        await broker(store, idp).current(grant.grant_id)
    assert idp.calls == 0


async def test_unknown_grant_is_401(store) -> None:
    with pytest.raises(InvalidToken):
        await broker(store, ScriptedIdP()).current("0" * 32)


async def test_fresh_grant_is_served_from_cache_within_bound(store) -> None:
    idp = ScriptedIdP()
    grant = await store.create_grant(
        subject="u1", client_id="c1", scopes=[], claims={}, upstream=creds(time.time() + 3600)
    )
    b = broker(store, idp, cache_seconds=60)
    first = await b.current(grant.grant_id)
    await store.delete_grant(grant.grant_id)
    assert (await b.current(grant.grant_id)).upstream.access_token == first.upstream.access_token  # cached
    b.forget(grant.grant_id)
    with pytest.raises(InvalidToken):
        await b.current(grant.grant_id)


async def test_a_cancelled_caller_does_not_cancel_the_shared_refresh(store) -> None:
    idp = ScriptedIdP()
    idp.delay = 0.2
    grant = await expired_grant(store)
    b = broker(store, idp)
    first = asyncio.ensure_future(b.current(grant.grant_id))
    second = asyncio.ensure_future(b.current(grant.grant_id))
    await asyncio.sleep(0.05)
    first.cancel()
    got = await second
    assert got.upstream.access_token == "up-at-1"
    assert idp.calls == 1


class CountingIdP(ScriptedIdP):
    """Records how many refreshes were at the IdP at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().refresh(refresh_token, scope=scope)
        finally:
            self.in_flight -= 1


async def test_a_wave_of_expiring_grants_reaches_the_idp_a_few_at_a_time(store) -> None:
    idp = CountingIdP()
    idp.delay = 0.01
    grants = [await expired_grant(store) for _ in range(60)]
    b = broker(store, idp, max_concurrency=4, slot_timeout=5)
    results = await asyncio.gather(*(b.current(g.grant_id) for g in grants))
    assert idp.peak == 4  # bounded, and used
    assert idp.calls == 60  # one refresh per grant, none retried
    assert all(r.upstream.access_token.startswith("up-at-") for r in results)


async def test_waiting_past_the_idp_timeout_for_a_slot_is_a_503_not_a_pile_up(store) -> None:
    idp = CountingIdP()
    idp.delay = 1.0  # a slow IdP
    grants = [await expired_grant(store) for _ in range(6)]
    metrics = Metrics()
    b = broker(store, idp, metrics, max_concurrency=2, slot_timeout=0.2)
    outcomes = await asyncio.gather(*(b.current(g.grant_id) for g in grants), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, ServiceUnavailable)]
    assert len(refused) == 4 and idp.calls == 2 and idp.peak == 2
    assert all(r.extra_headers["Retry-After"] and "waiting for the IdP" in r.description for r in refused)
    assert metrics.registry.get_sample_value("mcp_sidecar_upstream_refreshes_total", {"outcome": "failed"}) == 4
    # A grant whose current token is still valid keeps working while it waits in vain.
    fresh_enough = await expired_grant(store, exp_in=30)  # inside the skew: wants a refresh, still usable
    busy = [await expired_grant(store) for _ in range(2)]
    blocker = [asyncio.ensure_future(b.current(g.grant_id)) for g in busy]
    await asyncio.sleep(0.05)
    kept = await b.current(fresh_enough.grant_id)
    assert kept.upstream.access_token == "up-at-0"
    await asyncio.gather(*blocker, return_exceptions=True)


async def test_a_rotated_token_is_written_through_a_short_store_outage(store, monkeypatch) -> None:
    """The IdP rotated the refresh token: losing the write would lose the grant, so it is retried."""
    from sidecar.store.base import StoreUnavailable

    idp = ScriptedIdP()
    grant = await expired_grant(store)
    real = store.compare_and_set_upstream
    failures = iter([True, True, False])

    async def flaky(*args: Any, **kwargs: Any) -> bool:
        if next(failures, False):
            raise StoreUnavailable("redis compare_and_set_upstream failed (ConnectionError)")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "compare_and_set_upstream", flaky)
    fresh = await broker(store, idp).current(grant.grant_id)
    assert idp.calls == 1 and fresh.upstream.access_token == "up-at-1"
    stored = await store.get_grant(grant.grant_id)
    assert stored.upstream.refresh_token == "up-rt-1"  # the rotated token survived


async def test_a_long_store_outage_after_rotation_is_a_503(store, monkeypatch) -> None:
    from sidecar.store.base import StoreUnavailable

    grant = await expired_grant(store)

    async def down(*args: Any, **kwargs: Any) -> bool:
        raise StoreUnavailable("redis compare_and_set_upstream failed (ConnectionError)")

    monkeypatch.setattr(store, "compare_and_set_upstream", down)
    with pytest.raises(ServiceUnavailable):
        await broker(store, ScriptedIdP(), lock_seconds=1.5).current(grant.grant_id)
