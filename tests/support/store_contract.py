"""The ``TokenStore`` contract suite (DESIGN §5, §6, §8), run against every backend.

A test folder subclasses :class:`StoreContract` and overrides the ``h`` fixture with a :class:`Harness` for its
backend (memory, fakeredis, a real redis-server, a real Redis Cluster). The harness carries a :class:`FakeClock`
shared with the store and a :class:`RawView` that reads and writes the backend's raw records, so the suite can
check TTLs, prove that no secret is stored in clear, and tamper with ciphertexts.

Time: every record's logical expiry follows the injected clock, so the suite moves time with
``h.clock.advance``. Redis' own key expiry runs on real time; the few tests about keys that have only a Redis
TTL (locks, codes, pending logins, clients) use sub-second TTLs and a short real sleep as well.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from sidecar.crypto import KeyRing
from sidecar.store.base import (
    Grant,
    KeyLayout,
    RecordCorrupt,
    RotationOutcome,
    TokenPair,
    TokenStore,
    UpstreamCredentials,
    mint_access_token,
    mint_refresh_token,
    token_hash,
)
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.memory_keyspace import Entry
from sidecar.store.redis import RedisTokenStore
from tests.support.redis_servers import random_prefix

# Every harness encrypts with this ring (the key rotation test builds a larger one around it).
CONTRACT_KID = "k-old"
CONTRACT_KEY = b"\x07" * 32
GRACE_SECONDS = 100  # record_grace_seconds of every harness
HOUR = 3600
DAY = 86400
# Real Redis TTLs run on the wall clock while the test runs; allow for a slow CI machine between the write and
# the PTTL read.
TTL_TOLERANCE_MS = 5000
# Sub-second TTL for records whose only expiry is Redis' own (locks, codes, ...), and how long to sleep past it.
SHORT_TTL_SECONDS = 0.15
PAST_SHORT_TTL_SECONDS = 0.4


class FakeClock:
    """Epoch seconds that only move when told to (starts at the real time so Redis TTLs stay sensible)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def contract_keyring() -> KeyRing:
    return KeyRing([(CONTRACT_KID, CONTRACT_KEY)])


class RawView(Protocol):
    """The backend's raw records, as Redis would show them."""

    async def keys(self) -> list[str]: ...

    async def pttl_ms(self, key: str) -> int | None: ...

    async def hget(self, key: str, field: str) -> str | None: ...

    async def hset(self, key: str, field: str, value: str) -> None: ...

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None:
        """Write a string record (an existing one keeps its expiry; a new one has none)."""
        ...

    async def dump(self) -> bytes:
        """Every key this test wrote, with its serialized value(s) (Redis: DUMP plus GET/HGETALL/ZRANGE)."""
        ...


@dataclass
class Harness:
    store: TokenStore
    clock: FakeClock
    keyring: KeyRing
    prefix: str
    raw: RawView
    # A second store over the same data with another key ring (key rotation tests).
    with_keyring: Callable[[KeyRing], Awaitable[TokenStore]]
    # Whether some records expire on Redis' own (real-time) clock only.
    real_time_ttls: bool = True

    async def pass_short_ttl(self) -> None:
        """Let a record written with SHORT_TTL_SECONDS expire, on the store's clock and on Redis' own."""
        self.clock.advance(1)
        if self.real_time_ttls:
            await asyncio.sleep(PAST_SHORT_TTL_SECONDS)

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(self.prefix)


def upstream(
    clock: FakeClock, *, access: float = HOUR, refresh: float | None = None, tag: str = ""
) -> UpstreamCredentials:
    return UpstreamCredentials(
        access_token=f"UPSTREAM-ACCESS-{tag}-secretvalue",
        refresh_token=f"UPSTREAM-REFRESH-{tag}-secretvalue",
        id_token=f"UPSTREAM-IDTOKEN-{tag}-secretvalue",
        access_expires_at=clock() + access,
        refresh_expires_at=None if refresh is None else clock() + refresh,
        id_token_expires_at=clock() + access,
    )


async def new_grant(h: Harness, **kw: Any) -> Grant:
    return await h.store.create_grant(
        subject=kw.get("subject", "user-1"),
        client_id=kw.get("client_id", "client-1"),
        scopes=kw.get("scopes", ["openid", "email"]),
        claims=kw.get("claims", {"sub": "user-1", "email": "u@example.com", "name": "U Ser"}),
        upstream=kw.get("upstream", upstream(h.clock)),
    )


async def issue(h: Harness, gid: str, *, access_ttl: float = HOUR, refresh_ttl: float = 30 * DAY) -> TokenPair:
    pair = await h.store.issue_tokens(
        gid,
        access_token=mint_access_token(gid),
        refresh_token=mint_refresh_token(gid),
        access_ttl=access_ttl,
        refresh_ttl=refresh_ttl,
    )
    assert pair is not None
    return pair


async def rotate(h: Harness, gid: str, old: str, *, grace: float = 30, refresh_ttl: float = 30 * DAY) -> Any:
    return await h.store.rotate_refresh_token(
        gid,
        old,
        new_access_token=mint_access_token(gid),
        new_refresh_token=mint_refresh_token(gid),
        access_ttl=HOUR,
        refresh_ttl=refresh_ttl,
        replay_grace=grace,
    )


async def grant_keys(h: Harness, gid: str) -> list[str]:
    return [k for k in await h.raw.keys() if f"{{{gid}}}" in k]


class StoreContract:
    """Behaviour every ``TokenStore`` backend must show. Subclasses provide the ``h`` fixture."""

    @pytest.fixture
    def h(self) -> Harness:
        raise NotImplementedError("the test class for a backend overrides this fixture")

    # --- basics -----------------------------------------------------------------------------------------

    async def test_ping(self, h: Harness) -> None:
        await h.store.ping()

    async def test_create_and_get_grant_round_trips(self, h: Harness) -> None:
        creds = upstream(h.clock, refresh=10 * DAY)
        grant = await new_grant(h, upstream=creds, scopes=["openid", "files:read"])
        assert len(grant.grant_id) == 32
        assert grant.generation == 1
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None
        assert got == grant
        assert got.subject == "user-1" and got.client_id == "client-1"
        assert got.scopes == ("openid", "files:read")
        assert got.claims == {"sub": "user-1", "email": "u@example.com", "name": "U Ser"}
        assert got.upstream == creds
        assert got.created_at == got.updated_at == h.clock()

    async def test_unknown_grant_is_none(self, h: Harness) -> None:
        assert await h.store.get_grant("0" * 32) is None

    async def test_grant_without_upstream(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=None)
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.upstream is None

    # --- compare-and-set (DESIGN §7.3) ------------------------------------------------------------------

    async def test_compare_and_set_bumps_generation(self, h: Harness) -> None:
        grant = await new_grant(h)
        h.clock.advance(10)
        fresh = upstream(h.clock, tag="new")
        assert await h.store.compare_and_set_upstream(grant.grant_id, 1, fresh, claims={"sub": "user-1", "x": 1})
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None
        assert got.generation == 2 and got.upstream == fresh
        assert got.claims == {"sub": "user-1", "x": 1}
        assert got.updated_at == h.clock() and got.created_at == grant.created_at

    async def test_compare_and_set_keeps_claims_when_not_given(self, h: Harness) -> None:
        grant = await new_grant(h)
        assert await h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock, tag="n"))
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.claims == grant.claims

    async def test_compare_and_set_stale_generation_loses(self, h: Harness) -> None:
        grant = await new_grant(h)
        assert await h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock, tag="a"))
        assert not await h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock, tag="b"))
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.generation == 2
        assert got.upstream is not None and got.upstream.access_token == "UPSTREAM-ACCESS-a-secretvalue"

    async def test_compare_and_set_concurrent_exactly_one_wins(self, h: Harness) -> None:
        grant = await new_grant(h)
        results = await asyncio.gather(
            *(h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock, tag=str(i))) for i in range(20))
        )
        assert sum(results) == 1
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.generation == 2

    async def test_compare_and_set_missing_grant(self, h: Harness) -> None:
        assert not await h.store.compare_and_set_upstream("f" * 32, 1, upstream(h.clock))

    async def test_drop_upstream(self, h: Harness) -> None:
        grant = await new_grant(h)
        assert not await h.store.drop_upstream(grant.grant_id, 7)
        assert await h.store.drop_upstream(grant.grant_id, 1)
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None
        assert got.upstream is None and got.generation == 2
        assert not await h.store.drop_upstream(grant.grant_id, 1)

    # --- client tokens ----------------------------------------------------------------------------------

    async def test_find_access_token_gives_grant_and_expiry(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        found = await h.store.find_access_token(pair.access_token)
        assert found is not None
        assert found.grant_id == grant.grant_id
        assert found.expires_at == pair.access_expires_at
        assert await h.store.find_access_token(pair.refresh_token) is None
        h.clock.advance(HOUR + 1)
        assert await h.store.find_access_token(pair.access_token) is None

    async def test_issue_and_lookup(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        assert pair.access_expires_at == h.clock() + HOUR
        assert pair.refresh_expires_at == h.clock() + 30 * DAY
        assert await h.store.lookup_access_token(pair.access_token) == grant.grant_id
        assert pair.refresh_token is not None
        assert await h.store.lookup_access_token(pair.refresh_token) is None  # a refresh token is no bearer
        assert await h.store.lookup_access_token(mint_access_token(grant.grant_id)) is None
        assert await h.store.lookup_access_token("garbage") is None
        assert await h.store.lookup_access_token(pair.access_token + "x") is None

    async def test_access_token_without_refresh_token(self, h: Harness) -> None:
        grant = await new_grant(h)
        at = mint_access_token(grant.grant_id)
        pair = await h.store.issue_tokens(
            grant.grant_id, access_token=at, refresh_token=None, access_ttl=60, refresh_ttl=DAY
        )
        assert pair is not None and pair.refresh_token is None and pair.refresh_expires_at is None
        assert await h.store.lookup_access_token(at) == grant.grant_id

    async def test_token_with_another_grants_id_is_unknown(self, h: Harness) -> None:
        one, two = await new_grant(h), await new_grant(h)
        pair = await issue(h, one.grant_id)
        forged = pair.access_token.replace(one.grant_id, two.grant_id)
        assert await h.store.lookup_access_token(forged) is None

    async def test_issue_for_missing_grant(self, h: Harness) -> None:
        gid = "a" * 32
        assert (
            await h.store.issue_tokens(
                gid, access_token=mint_access_token(gid), refresh_token=None, access_ttl=60, refresh_ttl=60
            )
            is None
        )

    async def test_issue_refuses_tokens_of_another_grant(self, h: Harness) -> None:
        grant = await new_grant(h)
        with pytest.raises(ValueError):
            await h.store.issue_tokens(
                grant.grant_id,
                access_token=mint_access_token("b" * 32),
                refresh_token=None,
                access_ttl=60,
                refresh_ttl=60,
            )
        with pytest.raises(ValueError):
            await h.store.issue_tokens(
                grant.grant_id,
                access_token=mint_refresh_token(grant.grant_id),
                refresh_token=None,
                access_ttl=60,
                refresh_ttl=60,
            )

    async def test_access_token_expires_but_grant_stays(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=upstream(h.clock, access=60))
        pair = await issue(h, grant.grant_id, access_ttl=60, refresh_ttl=DAY)
        h.clock.advance(61)
        assert await h.store.lookup_access_token(pair.access_token) is None
        # DESIGN §5: a record is never deleted just because an access token expired.
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.upstream is not None
        result = await rotate(h, grant.grant_id, pair.refresh_token or "")
        assert result.outcome is RotationOutcome.ROTATED

    async def test_revoke_access_token(self, h: Harness) -> None:
        grant = await new_grant(h)
        first, second = await issue(h, grant.grant_id), await issue(h, grant.grant_id)
        assert await h.store.revoke_token(first.access_token)
        assert await h.store.lookup_access_token(first.access_token) is None
        assert await h.store.lookup_access_token(second.access_token) == grant.grant_id
        assert await h.store.get_grant(grant.grant_id) is not None
        assert not await h.store.revoke_token(first.access_token)

    async def test_revoke_refresh_token_revokes_the_grant(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        assert pair.refresh_token is not None
        assert await h.store.revoke_token(pair.refresh_token)
        assert await h.store.get_grant(grant.grant_id) is None
        assert await h.store.lookup_access_token(pair.access_token) is None
        assert await grant_keys(h, grant.grant_id) == []
        assert not await h.store.revoke_token(pair.refresh_token)

    async def test_revoke_unknown_token(self, h: Harness) -> None:
        assert not await h.store.revoke_token("nope")
        assert not await h.store.revoke_token(mint_refresh_token("c" * 32))
        assert not await h.store.revoke_token(mint_access_token("c" * 32))

    async def test_delete_grant_removes_every_key_of_it(self, h: Harness) -> None:
        grant = await new_grant(h)
        other = await new_grant(h)
        other_pair = await issue(h, other.grant_id)
        pairs = [await issue(h, grant.grant_id) for _ in range(3)]
        rotated = await rotate(h, grant.grant_id, pairs[0].refresh_token or "")
        assert rotated.outcome is RotationOutcome.ROTATED
        assert await h.store.acquire_lock(grant.grant_id, "me", 10_000)
        assert await grant_keys(h, grant.grant_id) != []
        assert await h.store.delete_grant(grant.grant_id)
        assert await h.store.get_grant(grant.grant_id) is None
        for pair in [*pairs, rotated.tokens]:
            assert await h.store.lookup_access_token(pair.access_token) is None
        assert await grant_keys(h, grant.grant_id) == []
        assert not await h.store.delete_grant(grant.grant_id)
        assert await h.store.lookup_access_token(other_pair.access_token) == other.grant_id

    async def test_delete_grant_with_many_tokens(self, h: Harness) -> None:
        grant = await new_grant(h)
        for _ in range(300):  # more than one deletion batch
            await h.store.issue_tokens(
                grant.grant_id,
                access_token=mint_access_token(grant.grant_id),
                refresh_token=None,
                access_ttl=HOUR,
                refresh_ttl=HOUR,
            )
        assert len(await grant_keys(h, grant.grant_id)) == 302  # grant + index + 300 tokens
        assert await h.store.delete_grant(grant.grant_id)
        assert await grant_keys(h, grant.grant_id) == []

    # --- refresh-token rotation (DESIGN §8) -------------------------------------------------------------

    async def test_rotation_is_single_use(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        first = await rotate(h, grant.grant_id, pair.refresh_token or "")
        assert first.outcome is RotationOutcome.ROTATED
        assert first.tokens is not None and first.tokens.refresh_token not in (None, pair.refresh_token)
        assert await h.store.lookup_access_token(first.tokens.access_token) == grant.grant_id
        second = await rotate(h, grant.grant_id, first.tokens.refresh_token)
        assert second.outcome is RotationOutcome.ROTATED
        assert second.tokens is not None and second.tokens != first.tokens

    async def test_replay_inside_grace_gets_the_same_pair(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        first = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=30)
        h.clock.advance(29)
        again = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=30)
        assert again.outcome is RotationOutcome.REPLAYED
        assert again.tokens == first.tokens
        assert await h.store.get_grant(grant.grant_id) is not None

    async def test_reuse_after_grace_revokes_the_family(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        first = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=30)
        assert first.tokens is not None and first.tokens.refresh_token is not None
        h.clock.advance(31)
        reuse = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=30)
        assert reuse.outcome is RotationOutcome.REUSE_DETECTED and reuse.tokens is None
        assert await h.store.get_grant(grant.grant_id) is None
        assert await h.store.lookup_access_token(first.tokens.access_token) is None
        assert await h.store.lookup_access_token(pair.access_token) is None
        assert (await rotate(h, grant.grant_id, first.tokens.refresh_token)).outcome is RotationOutcome.INVALID
        assert await grant_keys(h, grant.grant_id) == []

    async def test_zero_grace_means_any_reuse_is_theft(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        assert (await rotate(h, grant.grant_id, pair.refresh_token or "", grace=0)).outcome is RotationOutcome.ROTATED
        reuse = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=0)
        assert reuse.outcome is RotationOutcome.REUSE_DETECTED
        assert await h.store.get_grant(grant.grant_id) is None

    async def test_rotation_of_unknown_expired_or_foreign_tokens_is_invalid(self, h: Harness) -> None:
        grant = await new_grant(h)
        other = await new_grant(h)
        pair = await issue(h, grant.grant_id, refresh_ttl=HOUR)
        assert (await rotate(h, grant.grant_id, mint_refresh_token(grant.grant_id))).outcome is RotationOutcome.INVALID
        assert (await rotate(h, grant.grant_id, "junk")).outcome is RotationOutcome.INVALID
        assert (await rotate(h, grant.grant_id, pair.access_token)).outcome is RotationOutcome.INVALID
        other_rt = (await issue(h, other.grant_id)).refresh_token or ""
        assert (await rotate(h, grant.grant_id, other_rt)).outcome is RotationOutcome.INVALID
        h.clock.advance(HOUR + 1)
        assert (await rotate(h, grant.grant_id, pair.refresh_token or "")).outcome is RotationOutcome.INVALID
        assert await h.store.get_grant(grant.grant_id) is not None  # expiry is not theft

    async def test_rotation_after_grant_deleted_is_invalid(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        await h.store.delete_grant(grant.grant_id)
        assert (await rotate(h, grant.grant_id, pair.refresh_token or "")).outcome is RotationOutcome.INVALID

    async def test_concurrent_rotation_has_exactly_one_winner(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id)
        old = pair.refresh_token or ""
        results = await asyncio.gather(*(rotate(h, grant.grant_id, old, grace=30) for _ in range(50)))
        outcomes = [r.outcome for r in results]
        assert outcomes.count(RotationOutcome.ROTATED) == 1
        assert outcomes.count(RotationOutcome.REPLAYED) == 49
        winner = next(r.tokens for r in results if r.outcome is RotationOutcome.ROTATED)
        assert all(r.tokens == winner for r in results)
        assert winner is not None
        assert await h.store.lookup_access_token(winner.access_token) == grant.grant_id
        h.clock.advance(31)
        late = await asyncio.gather(*(rotate(h, grant.grant_id, old, grace=30) for _ in range(5)))
        late_outcomes = [r.outcome for r in late]
        assert late_outcomes.count(RotationOutcome.REUSE_DETECTED) == 1  # the first one revokes the grant ...
        assert late_outcomes.count(RotationOutcome.INVALID) == 4  # ... so the others find nothing
        assert await h.store.get_grant(grant.grant_id) is None
        assert await h.store.lookup_access_token(winner.access_token) is None

    # --- locks (DESIGN §7.3) ----------------------------------------------------------------------------

    async def test_lock_has_one_owner(self, h: Harness) -> None:
        gid = (await new_grant(h)).grant_id
        assert await h.store.acquire_lock(gid, "a", 10_000)
        assert not await h.store.acquire_lock(gid, "b", 10_000)
        assert not await h.store.release_lock(gid, "b")
        assert await h.store.release_lock(gid, "a")
        assert not await h.store.release_lock(gid, "a")
        assert await h.store.acquire_lock(gid, "b", 10_000)

    async def test_concurrent_lock_exactly_one_holder(self, h: Harness) -> None:
        gid = (await new_grant(h)).grant_id
        got = await asyncio.gather(*(h.store.acquire_lock(gid, f"o{i}", 10_000) for i in range(30)))
        assert sum(got) == 1

    async def test_lock_expires(self, h: Harness) -> None:
        gid = (await new_grant(h)).grant_id
        assert await h.store.acquire_lock(gid, "a", int(SHORT_TTL_SECONDS * 1000))
        await h.pass_short_ttl()
        assert await h.store.acquire_lock(gid, "b", 10_000)
        assert not await h.store.release_lock(gid, "a")

    # --- registrations, codes, pending logins, consent -------------------------------------------------

    async def test_clients(self, h: Harness) -> None:
        meta = {"client_id": "c1", "redirect_uris": ["http://127.0.0.1:3000/cb"], "client_name": "Ç"}
        assert await h.store.get_client("c1") is None
        await h.store.put_client("c1", meta)
        assert await h.store.get_client("c1") == meta
        await h.store.put_client("c2", meta, ttl=SHORT_TTL_SECONDS)
        await h.pass_short_ttl()
        assert await h.store.get_client("c2") is None
        assert await h.store.get_client("c1") == meta

    async def test_code_is_single_use(self, h: Harness) -> None:
        payload = {"grant_id": "g", "code_challenge": "abc", "redirect_uri": "http://x/cb", "scopes": ["a"]}
        await h.store.put_code("the-code", payload)
        assert await h.store.take_code("the-code") == payload
        assert await h.store.take_code("the-code") is None
        assert await h.store.take_code("other") is None

    async def test_code_concurrent_redemption_has_one_winner(self, h: Harness) -> None:
        await h.store.put_code("c", {"n": 1})
        got = await asyncio.gather(*(h.store.take_code("c") for _ in range(20)))
        assert [g for g in got if g is not None] == [{"n": 1}]

    async def test_code_expires(self, h: Harness) -> None:
        await h.store.put_code("c", {"n": 1}, ttl=SHORT_TTL_SECONDS)
        await h.pass_short_ttl()
        assert await h.store.take_code("c") is None

    async def test_pending_is_single_use(self, h: Harness) -> None:
        payload = {"code_verifier": "v" * 43, "nonce": "n", "client_id": "c"}
        await h.store.put_pending("state-1", payload)
        assert await h.store.take_pending("state-1") == payload
        assert await h.store.take_pending("state-1") is None
        await h.store.put_pending("state-2", payload, ttl=SHORT_TTL_SECONDS)
        await h.pass_short_ttl()
        assert await h.store.take_pending("state-2") is None

    async def test_consent(self, h: Harness) -> None:
        assert await h.store.get_consent("user", "client") is None
        await h.store.put_consent("user", "client", ["openid", "email", "openid"], ttl=DAY)
        assert await h.store.get_consent("user", "client") == frozenset({"openid", "email"})
        assert await h.store.get_consent("user", "other") is None

    # --- TTL rules (DESIGN §5) --------------------------------------------------------------------------

    async def assert_grant_ttl(self, h: Harness, gid: str, expected_seconds: float) -> None:
        got = await h.store.get_grant(gid)
        assert got is not None
        assert got.expires_at == h.clock() + expected_seconds
        ttl = await h.raw.pttl_ms(h.keys.grant(gid))
        assert ttl is not None
        assert abs(ttl - expected_seconds * 1000) <= TTL_TOLERANCE_MS, (ttl, expected_seconds)

    async def test_grant_ttl_is_longest_credential_plus_grace(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=upstream(h.clock, access=HOUR, refresh=2 * HOUR))
        await self.assert_grant_ttl(h, grant.grant_id, 2 * HOUR + GRACE_SECONDS)
        await issue(h, grant.grant_id, access_ttl=HOUR, refresh_ttl=30 * DAY)
        await self.assert_grant_ttl(h, grant.grant_id, 30 * DAY + GRACE_SECONDS)

    async def test_grant_ttl_unknown_refresh_expiry_counts_access(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=upstream(h.clock, access=HOUR, refresh=None))
        await self.assert_grant_ttl(h, grant.grant_id, HOUR + GRACE_SECONDS)

    async def test_grant_ttl_without_credentials_is_grace(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=None)
        await self.assert_grant_ttl(h, grant.grant_id, GRACE_SECONDS)

    async def test_grant_ttl_reset_on_every_write(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=upstream(h.clock, access=HOUR))
        await self.assert_grant_ttl(h, grant.grant_id, HOUR + GRACE_SECONDS)
        h.clock.advance(HOUR - 10)  # access nearly expired, record alive
        assert await h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock, access=HOUR))
        await self.assert_grant_ttl(h, grant.grant_id, HOUR + GRACE_SECONDS)
        h.clock.advance(HOUR + 50)  # upstream access expired 50 s ago, still inside the grace
        got = await h.store.get_grant(grant.grant_id)
        assert got is not None and got.upstream is not None
        assert await h.store.drop_upstream(grant.grant_id, 2)
        await self.assert_grant_ttl(h, grant.grant_id, GRACE_SECONDS)

    async def test_grant_expires_after_grace(self, h: Harness) -> None:
        grant = await new_grant(h, upstream=upstream(h.clock, access=60))
        h.clock.advance(60 + GRACE_SECONDS - 1)
        assert await h.store.get_grant(grant.grant_id) is not None
        h.clock.advance(2)
        assert await h.store.get_grant(grant.grant_id) is None
        assert not await h.store.compare_and_set_upstream(grant.grant_id, 1, upstream(h.clock))

    async def test_client_token_records_carry_their_ttls(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id, access_ttl=HOUR, refresh_ttl=DAY)
        at_ttl = await h.raw.pttl_ms(h.keys.member_key(grant.grant_id, f"at:{token_hash(pair.access_token)}"))
        rt_ttl = await h.raw.pttl_ms(h.keys.member_key(grant.grant_id, f"rt:{token_hash(pair.refresh_token or '')}"))
        assert at_ttl is not None and abs(at_ttl - HOUR * 1000) <= TTL_TOLERANCE_MS
        assert rt_ttl is not None and abs(rt_ttl - DAY * 1000) <= TTL_TOLERANCE_MS

    # --- secrets at rest (DESIGN §6) --------------------------------------------------------------------

    async def test_nothing_secret_is_stored_in_clear(self, h: Harness) -> None:
        creds = upstream(h.clock, refresh=DAY, tag="dump")
        grant = await new_grant(h, upstream=creds)
        pair = await issue(h, grant.grant_id)
        rotated = await rotate(h, grant.grant_id, pair.refresh_token or "", grace=30)
        assert rotated.tokens is not None
        assert await h.store.acquire_lock(grant.grant_id, "owner-1", 10_000)
        await h.store.put_code("AUTH-CODE-secretvalue", {"verifier": "PKCE-VERIFIER-secretvalue"})
        await h.store.put_pending("STATE-secretvalue", {"code_verifier": "UPSTREAM-VERIFIER-secretvalue"})
        await h.store.put_client("client-1", {"client_id": "client-1", "redirect_uris": ["http://127.0.0.1/cb"]})
        await h.store.put_consent("user-1", "client-1", ["openid"], ttl=DAY)
        dump = await h.raw.dump()
        assert len(dump) > 500  # the dump really holds the records
        secrets_ = [
            creds.access_token,
            creds.refresh_token,
            creds.id_token,
            pair.access_token,
            pair.refresh_token,
            rotated.tokens.access_token,
            rotated.tokens.refresh_token,
            "AUTH-CODE-secretvalue",
            "PKCE-VERIFIER-secretvalue",
            "STATE-secretvalue",
            "UPSTREAM-VERIFIER-secretvalue",
        ]
        for secret in secrets_:
            assert secret is not None
            assert secret.encode() not in dump, secret
            # not even the random part of a client token (the grant id before it is public)
            assert secret.split(".")[-1].encode() not in dump, secret
        assert b"secretvalue" not in dump
        assert token_hash(pair.access_token).encode() in dump  # tokens appear as SHA-256 hashes

    async def test_ciphertext_moved_to_another_record_does_not_open(self, h: Harness) -> None:
        victim = await new_grant(h, subject="victim", upstream=upstream(h.clock, tag="victim"))
        attacker = await new_grant(h, subject="attacker", upstream=upstream(h.clock, tag="attacker"))
        envelope = await h.raw.hget(h.keys.grant(victim.grant_id), "up")
        assert envelope is not None and envelope.startswith("v1.")
        await h.raw.hset(h.keys.grant(attacker.grant_id), "up", envelope)
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(attacker.grant_id)
        assert await h.store.get_grant(victim.grant_id) == victim

    async def test_tampered_ciphertext_does_not_open(self, h: Harness) -> None:
        grant = await new_grant(h)
        key = h.keys.grant(grant.grant_id)
        envelope = await h.raw.hget(key, "up")
        assert envelope is not None
        flipped = envelope[:-2] + ("A" if envelope[-2] != "A" else "B") + envelope[-1]
        await h.raw.hset(key, "up", flipped)
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(grant.grant_id)

    async def test_unknown_record_version_is_refused(self, h: Harness) -> None:
        grant = await new_grant(h)
        await h.raw.hset(h.keys.grant(grant.grant_id), "v", "99")
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(grant.grant_id)

    async def test_old_key_still_reads_after_rotation(self, h: Harness) -> None:
        creds = upstream(h.clock, tag="old-key")
        grant = await new_grant(h, upstream=creds)
        await h.store.put_code("code-under-old-key", {"n": 1})
        assert h.keyring.kids == (CONTRACT_KID,)
        fresh = KeyRing([("k-new", b"\x01" * 32), (CONTRACT_KID, CONTRACT_KEY)])
        rotated_store = await h.with_keyring(fresh)
        got = await rotated_store.get_grant(grant.grant_id)
        assert got is not None and got.upstream == creds
        assert await rotated_store.take_code("code-under-old-key") == {"n": 1}
        # A write re-encrypts with the new first key ...
        assert await rotated_store.compare_and_set_upstream(grant.grant_id, 1, creds)
        envelope = await h.raw.hget(h.keys.grant(grant.grant_id), "up")
        assert envelope is not None and envelope.startswith("v1.k-new.")
        # ... which a ring without it cannot open: the operator must keep keys until records are rewritten.
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(grant.grant_id)

    # --- integrity (issue 12): every field that grants identity or access is sealed ---------------------------

    async def test_identity_fields_are_not_in_clear(self, h: Harness) -> None:
        await new_grant(h, subject="alice-subject", client_id="client-xyz", scopes=["scope-abc"],
                        claims={"email": "alice@example.com"})
        await h.store.put_client("client-xyz", {"client_id": "client-xyz", "redirect_uris": ["https://r.example/cb"],
                                                "secret_hash": "f" * 64})
        await h.store.put_consent("alice-subject", "client-xyz", ["scope-abc"], ttl=DAY)
        dump = await h.raw.dump()
        # (The client id itself names the registration's key: an identifier, not a grant of access.)
        for value in (b"alice-subject", b"scope-abc", b"alice@example.com", b"r.example", b"f" * 64):
            assert value not in dump, value

    @pytest.mark.parametrize("field", ["idn", "claims"])
    async def test_each_sealed_grant_field_edited_is_refused(self, h: Harness, field: str) -> None:
        victim = await new_grant(h, subject="victim", claims={"email": "victim@example.com"})
        attacker = await new_grant(h, subject="attacker", claims={"email": "attacker@example.com"})
        # A valid envelope of the same field from another grant: the associated data names the record.
        other = await h.raw.hget(h.keys.grant(attacker.grant_id), field)
        assert other is not None
        await h.raw.hset(h.keys.grant(victim.grant_id), field, other)
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(victim.grant_id)
        # ... and the other field's envelope of the same grant does not open in its place either.
        third = await new_grant(h, subject="third")
        swapped = await h.raw.hget(h.keys.grant(third.grant_id), "claims" if field == "idn" else "idn")
        assert swapped is not None
        await h.raw.hset(h.keys.grant(third.grant_id), field, swapped)
        with pytest.raises(RecordCorrupt):
            await h.store.get_grant(third.grant_id)

    @pytest.mark.parametrize(("field", "value"), [("sub", "attacker"), ("cid", "evil-client"),
                                                   ("scopes", '["admin"]'), ("gid", "0" * 32)])
    async def test_plain_identity_fields_written_into_a_grant_are_never_believed(
        self, h: Harness, field: str, value: str
    ) -> None:
        grant = await new_grant(h)
        await h.raw.hset(h.keys.grant(grant.grant_id), field, value)
        if field == "gid":
            with pytest.raises(RecordCorrupt):
                await h.store.get_grant(grant.grant_id)
            return
        assert await h.store.get_grant(grant.grant_id) == grant

    async def test_edited_client_registration_is_refused(self, h: Harness) -> None:
        meta = {"client_id": "c1", "redirect_uris": ["http://127.0.0.1:3000/cb"], "token_endpoint_auth_method": "none"}
        await h.store.put_client("c1", meta)
        await h.store.put_client("c2", {**meta, "client_id": "c2", "redirect_uris": ["https://evil.example/cb"]})
        key = h.keys.client("c1")
        # Plain JSON with an added redirect URI, or another client's (valid) envelope: both refused.
        for forged in (json.dumps({**meta, "redirect_uris": ["https://evil.example/cb"]}),
                       await h.raw.get(h.keys.client("c2"))):
            assert forged is not None
            await h.raw.set(key, forged)
            with pytest.raises(RecordCorrupt):
                await h.store.get_client("c1")

    async def test_edited_consent_is_refused(self, h: Harness) -> None:
        await h.store.put_consent("user-1", "client-1", ["openid"], ttl=DAY)
        await h.store.put_consent("user-1", "client-2", ["openid", "admin"], ttl=DAY)
        key = h.keys.consent("user-1", "client-1")
        for forged in ('["openid", "admin"]', await h.raw.get(h.keys.consent("user-1", "client-2"))):
            assert forged is not None
            await h.raw.set(key, forged)
            with pytest.raises(RecordCorrupt):
                await h.store.get_consent("user-1", "client-1")

    async def test_registrations_are_capped_but_renewals_pass(self, h: Harness) -> None:
        meta = {"client_id": "x"}
        assert await h.store.put_client("a", meta, ttl=SHORT_TTL_SECONDS, max_clients=2)
        assert await h.store.put_client("b", meta, ttl=DAY, max_clients=2)
        assert not await h.store.put_client("c", meta, ttl=DAY, max_clients=2)
        assert await h.store.get_client("c") is None
        assert await h.store.put_client("a", meta, ttl=SHORT_TTL_SECONDS, max_clients=2)  # a renewal
        await h.pass_short_ttl()
        assert await h.store.put_client("c", meta, ttl=DAY, max_clients=2)  # "a" expired: room again

    async def test_forged_or_edited_token_records_are_refused(self, h: Harness) -> None:
        """Whoever can write to the store cannot make a bearer for someone's grant, lengthen a token's life or
        revive a refresh token: token records are sealed with the key the writer does not have."""
        victim = await new_grant(h, subject="victim")
        pair = await issue(h, victim.grant_id)
        assert pair.refresh_token is not None
        # A made-up access token with a record written by hand (the old plain format), or another token's record.
        forged = mint_access_token(victim.grant_id)
        forged_key = h.keys.member_key(victim.grant_id, f"at:{token_hash(forged)}")
        real_key = h.keys.member_key(victim.grant_id, f"at:{token_hash(pair.access_token)}")
        real_value = await h.raw.get(real_key)
        assert real_value is not None and victim.grant_id not in real_value  # sealed, not "<exp>:<gid>"
        for value in (f"{int((h.clock() + DAY) * 1000)}:{victim.grant_id}", real_value):
            await h.raw.set(forged_key, value)
            assert await h.store.find_access_token(forged) is None
        # Editing the genuine record (a longer life) breaks it.
        await h.raw.set(real_key, f"{int((h.clock() + 365 * DAY) * 1000)}:{victim.grant_id}")
        assert await h.store.find_access_token(pair.access_token) is None
        # A refresh record whose seal is missing or belongs to another token is not rotated.
        rt_key = h.keys.member_key(victim.grant_id, f"rt:{token_hash(pair.refresh_token)}")
        other = await issue(h, victim.grant_id)
        other_seal = await h.raw.hget(h.keys.member_key(victim.grant_id, f"rt:{token_hash(other.refresh_token or '')}"),
                                      "seal")
        assert other_seal is not None
        await h.raw.hset(rt_key, "seal", other_seal)
        assert (await rotate(h, victim.grant_id, pair.refresh_token)).outcome is RotationOutcome.INVALID
        assert (await rotate(h, victim.grant_id, other.refresh_token or "")).outcome is RotationOutcome.ROTATED

    async def test_narrowed_rotation_records_the_scopes(self, h: Harness) -> None:
        grant = await new_grant(h, scopes=["openid", "email", "profile"])
        pair = await issue(h, grant.grant_id)
        found = await h.store.find_access_token(pair.access_token)
        assert found is not None and found.scopes is None
        result = await h.store.rotate_refresh_token(
            grant.grant_id, pair.refresh_token or "", new_access_token=mint_access_token(grant.grant_id),
            new_refresh_token=mint_refresh_token(grant.grant_id), access_ttl=HOUR, refresh_ttl=DAY,
            replay_grace=30, scopes=("openid", "email"),
        )
        assert result.outcome is RotationOutcome.ROTATED and result.tokens is not None
        found = await h.store.find_access_token(result.tokens.access_token)
        assert found is not None and found.scopes == ("openid", "email") and found.grant_id == grant.grant_id

    async def test_reprs_show_no_secrets(self, h: Harness) -> None:
        creds = upstream(h.clock, tag="repr")
        grant = await new_grant(h, upstream=creds)
        pair = await issue(h, grant.grant_id)
        text = " ".join([repr(grant), str(grant), repr(pair), str(pair), repr(h.store), repr(h.keyring)])
        for secret in (creds.access_token, creds.refresh_token, creds.id_token, pair.access_token, pair.refresh_token):
            assert secret is not None and secret not in text
        assert "***" in text


# ---------------------------------------------------------------------------------------------------------
# Harnesses for the backends


class MemoryRawView:
    def __init__(self, store: MemoryTokenStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock

    async def keys(self) -> list[str]:
        return list(self.store.raw_items())

    async def pttl_ms(self, key: str) -> int | None:
        deadline = self.store.raw_deadline_ms(key)
        return None if deadline is None else deadline - int(self.clock() * 1000)

    async def hget(self, key: str, field: str) -> str | None:
        record = self.store.raw_items().get(key)
        assert isinstance(record, dict)
        value = record.get(field)
        return None if value is None else str(value)

    async def hset(self, key: str, field: str, value: str) -> None:
        record = self.store.raw_items()[key]
        assert isinstance(record, dict)
        record[field] = value  # type: ignore[assignment]

    async def get(self, key: str) -> str | None:
        value = self.store.raw_items().get(key)
        assert value is None or isinstance(value, str)
        return value

    async def set(self, key: str, value: str) -> None:
        entry = self.store._data.get(key)  # type: ignore[attr-defined]
        if entry is None:
            self.store._data[key] = Entry(value, None)  # type: ignore[attr-defined]
        else:
            entry.value = value

    async def dump(self) -> bytes:
        return repr(self.store.raw_items()).encode()


def memory_harness() -> Harness:
    clock = FakeClock()
    keyring = contract_keyring()
    store = MemoryTokenStore(keyring, key_prefix="mcpsc", record_grace_seconds=GRACE_SECONDS, clock=clock)

    async def with_keyring(ring: KeyRing) -> TokenStore:
        other = MemoryTokenStore(ring, key_prefix="mcpsc", record_grace_seconds=GRACE_SECONDS, clock=clock)
        other._data = store._data  # the same records, read through another key ring
        return other

    return Harness(store, clock, keyring, "mcpsc", MemoryRawView(store, clock), with_keyring, real_time_ttls=False)


class RedisRawView:
    """Raw access to one test's keys: ``client`` for single-key commands, ``nodes`` (every master, bytes
    replies) for SCAN and DUMP."""

    def __init__(self, client: Any, nodes: list[Any], prefix: str) -> None:
        self.client = client
        self.nodes = nodes
        self.prefix = prefix

    async def _node_keys(self, node: Any) -> list[bytes]:
        return [k async for k in node.scan_iter(match=f"{self.prefix}:*", count=1000)]

    async def keys(self) -> list[str]:
        out: list[str] = []
        for node in self.nodes:
            out += [k.decode() for k in await self._node_keys(node)]
        return out

    async def pttl_ms(self, key: str) -> int | None:
        ttl = int(await self.client.pttl(key))
        return None if ttl < 0 else ttl

    async def hget(self, key: str, field: str) -> str | None:
        value = await self.client.hget(key, field)
        return None if value is None else str(value)

    async def hset(self, key: str, field: str, value: str) -> None:
        await self.client.hset(key, field, value)

    async def get(self, key: str) -> str | None:
        value = await self.client.get(key)
        return None if value is None else str(value)

    async def set(self, key: str, value: str) -> None:
        await self.client.set(key, value, keepttl=True)

    async def dump(self) -> bytes:
        chunks: list[bytes] = []
        for node in self.nodes:
            for key in await self._node_keys(node):
                chunks += [key, bytes(await node.dump(key) or b"")]
                kind = (await node.type(key)).decode()
                if kind == "string":
                    chunks.append(await node.get(key))
                elif kind == "hash":
                    for name, value in (await node.hgetall(key)).items():
                        chunks += [name, value]
                elif kind == "zset":
                    chunks += [m for m, _ in await node.zrange(key, 0, -1, withscores=True)]
                else:
                    raise AssertionError(f"unexpected Redis type {kind} for {key!r}")
        return b"\n".join(chunks)

    async def delete_all(self) -> None:
        for node in self.nodes:
            for key in await self._node_keys(node):
                await node.delete(key)


def redis_harness(client: Any, nodes: list[Any], *, prefix: str | None = None) -> tuple[Harness, RedisRawView]:
    """A harness over a redis-py (or fakeredis) client made with ``decode_responses=True``."""
    clock = FakeClock()
    keyring = contract_keyring()
    prefix = prefix or random_prefix()
    store = RedisTokenStore(client, keyring, key_prefix=prefix, record_grace_seconds=GRACE_SECONDS, clock=clock)

    async def with_keyring(ring: KeyRing) -> TokenStore:
        return RedisTokenStore(client, ring, key_prefix=prefix, record_grace_seconds=GRACE_SECONDS, clock=clock)

    raw = RedisRawView(client, nodes, prefix)
    return Harness(store, clock, keyring, prefix, raw, with_keyring), raw


async def every_operation(h: Harness) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """One call of every ``TokenStore`` method (but ``close``), named as the store names the operation in
    ``StoreUnavailable``; each may run again any number of times. Prepares a grant and tokens first."""
    grant = await new_grant(h)
    gid = grant.grant_id
    pair = await issue(h, gid)
    spare = await issue(h, gid)
    store = h.store

    async def issue_more() -> object:
        return await store.issue_tokens(
            gid, access_token=mint_access_token(gid), refresh_token=None, access_ttl=60, refresh_ttl=60
        )

    return [
        ("ping", store.ping),
        ("create_grant", lambda: new_grant(h)),
        ("get_grant", lambda: store.get_grant(gid)),
        ("compare_and_set_upstream", lambda: store.compare_and_set_upstream(gid, 99, upstream(h.clock))),
        ("drop_upstream", lambda: store.drop_upstream(gid, 99)),
        ("issue_tokens", issue_more),
        ("lookup_access_token", lambda: store.lookup_access_token(pair.access_token)),
        ("rotate_refresh_token", lambda: rotate(h, gid, pair.refresh_token or "")),
        ("revoke_token", lambda: store.revoke_token(spare.access_token)),
        ("revoke_token", lambda: store.revoke_token(mint_refresh_token(gid))),
        ("delete_grant", lambda: store.delete_grant("e" * 32)),
        ("acquire_lock", lambda: store.acquire_lock(gid, "o", 1000)),
        ("release_lock", lambda: store.release_lock(gid, "o")),
        ("put_client", lambda: store.put_client("c", {"client_id": "c"})),
        ("get_client", lambda: store.get_client("c")),
        ("put_code", lambda: store.put_code("code-secret", {"n": 1})),
        ("take_code", lambda: store.take_code("code-secret")),
        ("put_pending", lambda: store.put_pending("state-secret", {"n": 1})),
        ("take_pending", lambda: store.take_pending("state-secret")),
        ("put_consent", lambda: store.put_consent("u", "c", ["openid"], ttl=60)),
        ("get_consent", lambda: store.get_consent("u", "c")),
    ]
