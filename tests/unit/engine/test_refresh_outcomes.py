"""Refresh outcomes that never lose a token (issue 13): the IdP's rotated tokens are stored before the new
ID token is checked; a grant that nothing can renew is marked dead; the skew is clamped to half the token's
lifetime; the id_token mode's refresh goes through the same engine (single flight, store lock)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.challenge import InvalidToken
from sidecar.crypto import KeyRing
from sidecar.idp import IdPUnavailable, IdTokenInvalid
from sidecar.metrics import Metrics
from sidecar.refresh import CredentialBroker, dead, effective_skew, needs_refresh
from sidecar.store.base import UpstreamCredentials
from sidecar.store.memory import MemoryTokenStore
from tests.support.fake_idp import ScriptedIdP

NOW = 1_800_000_000.0


@pytest.fixture
def store() -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="outcomes")


def broker(store: MemoryTokenStore, idp: ScriptedIdP, **kw: Any) -> CredentialBroker:
    return CredentialBroker(
        store=store, idp=idp, metrics=kw.pop("metrics", Metrics()), skew=kw.pop("skew", 60), lock_seconds=5,
        cache_seconds=kw.pop("cache_seconds", 2), **kw,
    )


async def grant_with(store: MemoryTokenStore, upstream: UpstreamCredentials):
    return await store.create_grant(
        subject="u1", client_id="c1", scopes=["openid"], claims={"sub": "u1"}, upstream=upstream
    )


def expired(refresh: str | None = "up-rt-0") -> UpstreamCredentials:
    return UpstreamCredentials(
        access_token="up-at-0", refresh_token=refresh, id_token="up-idt-0",
        access_expires_at=time.time() - 5, id_token_expires_at=time.time() + 30,
    )


async def test_rotated_refresh_token_is_stored_when_the_new_id_token_fails_to_verify(store) -> None:
    """The IdP rotated (consumed) up-rt-0; the new id_token's key is unknown. The old code kept up-rt-0, whose
    reuse a rotating IdP treats as theft."""
    idp = ScriptedIdP()
    idp.id_tokens = True
    idp.verify_fail = IdTokenInvalid("no key in the IdP's key set matches the token's kid")
    grant = await grant_with(store, expired())
    metrics = Metrics()
    got = await broker(store, idp, metrics=metrics).current(grant.grant_id)
    assert got.upstream is not None and got.upstream.access_token == "up-at-1"
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and stored.upstream is not None
    assert stored.upstream.refresh_token == "up-rt-1"  # the rotated one, never the consumed one
    assert stored.upstream.access_token == "up-at-1"
    assert stored.upstream.id_token == "up-idt-0"  # an unverified id_token is never adopted
    assert metrics.upstream_refreshes.labels("id_token_rejected")._value.get() == 1


async def test_key_set_unreachable_during_verification_keeps_the_rotation(store) -> None:
    idp = ScriptedIdP()
    idp.id_tokens = True
    idp.verify_fail = IdPUnavailable("the IdP could not be reached")
    grant = await grant_with(store, expired())
    await broker(store, idp).current(grant.grant_id)
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and stored.upstream is not None and stored.upstream.refresh_token == "up-rt-1"


async def test_verified_new_id_token_is_adopted(store) -> None:
    idp = ScriptedIdP()
    idp.id_tokens = True
    grant = await grant_with(store, expired())
    await broker(store, idp).current(grant.grant_id)
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and stored.upstream is not None
    assert (stored.upstream.id_token, stored.upstream.refresh_token) == ("up-idt-1", "up-rt-1")


async def test_grant_without_refresh_token_is_marked_dead(store) -> None:
    idp = ScriptedIdP()
    grant = await grant_with(store, expired(refresh=None))
    with pytest.raises(InvalidToken):
        await broker(store, idp).current(grant.grant_id)
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and dead(stored.upstream, time.time())
    assert idp.calls == 0


def test_dead() -> None:
    assert dead(None, NOW)
    assert dead(UpstreamCredentials(access_token="a", access_expires_at=NOW - 1), NOW)
    assert not dead(UpstreamCredentials(access_token="a", access_expires_at=NOW + 1), NOW)
    assert not dead(UpstreamCredentials(access_token="a", refresh_token="r", access_expires_at=NOW - 1), NOW)


def test_skew_at_or_above_the_lifetime_does_not_refresh_on_every_request() -> None:
    """A 20 s IdP token with the default 60 s skew: refreshed at half its life, not on every request."""
    fresh = UpstreamCredentials(access_token="a", access_expires_at=NOW + 20, access_issued_at=NOW)
    assert effective_skew(fresh, 60) == 10
    assert not needs_refresh(fresh, NOW + 1, 60)
    assert needs_refresh(fresh, NOW + 10, 60)
    # Without a known issue time the configured skew applies unchanged (older records).
    assert effective_skew(UpstreamCredentials(access_token="a", access_expires_at=NOW + 20), 60) == 60


@given(
    lifetime=st.floats(min_value=0.5, max_value=86_400),
    skew=st.floats(min_value=0, max_value=3600),
    elapsed=st.floats(min_value=0, max_value=1),
)
@settings(max_examples=200, deadline=None)
def test_a_fresh_token_is_never_refreshed_before_half_its_life(lifetime: float, skew: float, elapsed: float) -> None:
    c = UpstreamCredentials(access_token="a", access_expires_at=NOW + lifetime, access_issued_at=NOW)
    now = NOW + elapsed * lifetime
    assert effective_skew(c, skew) <= min(skew, lifetime / 2) + 1e-6
    if elapsed < 0.49 and now < c.access_expires_at - skew - 1e-6:
        assert not needs_refresh(c, now, skew)
    if now >= c.access_expires_at:
        assert needs_refresh(c, now, skew)


async def test_refreshed_credentials_carry_their_issue_time(store) -> None:
    idp = ScriptedIdP(lifetime=20)
    grant = await grant_with(store, expired())
    before = time.time()
    await broker(store, idp).current(grant.grant_id)
    stored = await store.get_grant(grant.grant_id)
    assert stored is not None and stored.upstream is not None
    assert stored.upstream.access_issued_at is not None and stored.upstream.access_issued_at >= before - 1
    # and so a second request right away does not refresh again despite skew 60 > lifetime 20
    b = broker(store, idp, cache_seconds=0)
    await b.current(grant.grant_id)
    assert idp.calls == 1


async def test_id_token_refresh_shares_the_engine_single_flight_and_lock(store) -> None:
    """Two replicas' engines, ten /token calls each: one IdP refresh (the old code refreshed per call)."""
    idp = ScriptedIdP()
    idp.id_tokens = True
    idp.delay = 0.1
    upstream = UpstreamCredentials(
        access_token="up-at-0", refresh_token="up-rt-0", id_token="up-idt-0",
        access_expires_at=time.time() + 3600, id_token_expires_at=time.time() + 100,
    )
    grant = await grant_with(store, upstream)
    a, b = broker(store, idp), broker(store, idp)
    results = await asyncio.gather(*(x.refresh_id_token(grant, 3300) for x in [a, b] * 10))
    assert idp.calls == 1
    assert {r.upstream.id_token for r in results if r.upstream} == {"up-idt-1"}


async def test_id_token_refresh_not_needed_returns_the_grant_untouched(store) -> None:
    idp = ScriptedIdP()
    upstream = UpstreamCredentials(
        access_token="a", refresh_token="r", id_token="i", access_expires_at=time.time() + 3600,
        id_token_expires_at=time.time() + 3600,
    )
    grant = await grant_with(store, upstream)
    assert await broker(store, idp).refresh_id_token(grant, 3300) is grant
    assert idp.calls == 0
