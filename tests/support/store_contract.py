"""The store contract suites (DESIGN §5, §6, §8): one class per protocol of :mod:`sidecar.store.protocols`,
each run against every backend (memory, fakeredis, a real redis-server, the same behind a Sentinel, a real
Redis Cluster).

A test module runs every class of :data:`CONTRACTS` with the ``h`` fixture overridden by a
:class:`~tests.support.store_harness.Harness` for its backend (see :func:`backend_suites`). The harness
carries a fake clock shared with the store and a raw view of the backend's records.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sidecar.crypto import KeyRing
from sidecar.store.base import (
    RecordCorrupt,
    RotationOutcome,
    mint_access_token,
    mint_refresh_token,
    token_hash,
)
from tests.support.store_harness import (
    CONTRACT_KEY,
    CONTRACT_KID,
    DAY,
    GRACE_SECONDS,
    HOUR,
    SHORT_TTL_SECONDS,
    TTL_TOLERANCE_MS,
    Harness,
    grant_keys,
    issue,
    new_grant,
    rotate,
    upstream,
)


class _Contract:
    """The ``h`` fixture every suite needs; a backend's test class overrides it."""

    @pytest.fixture
    def h(self) -> Harness:
        raise NotImplementedError("the test class for a backend overrides this fixture")


class LifecycleContract(_Contract):
    """``StoreLifecycle``: readiness and shutdown."""

    async def test_ping(self, h: Harness) -> None:
        await h.store.ping()


class GrantContract(_Contract):
    """``GrantStore``: grants, their upstream credentials, compare-and-set, record lifetimes and sealed
    fields (DESIGN §5, §6, §7.3)."""

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


class ClientTokenContract(_Contract):
    """``ClientTokenStore``: the client's opaque tokens: issue, lookup, revocation, single-use rotation
    (DESIGN §2, §8)."""

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

    async def test_client_token_records_carry_their_ttls(self, h: Harness) -> None:
        grant = await new_grant(h)
        pair = await issue(h, grant.grant_id, access_ttl=HOUR, refresh_ttl=DAY)
        at_ttl = await h.raw.pttl_ms(h.keys.member_key(grant.grant_id, f"at:{token_hash(pair.access_token)}"))
        rt_ttl = await h.raw.pttl_ms(h.keys.member_key(grant.grant_id, f"rt:{token_hash(pair.refresh_token or '')}"))
        assert at_ttl is not None and abs(at_ttl - HOUR * 1000) <= TTL_TOLERANCE_MS
        assert rt_ttl is not None and abs(rt_ttl - DAY * 1000) <= TTL_TOLERANCE_MS

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


class LockContract(_Contract):
    """``LockStore``: the per-grant refresh lock (DESIGN §7.3)."""

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


class ClientContract(_Contract):
    """``ClientStore``: client registrations: sealed, capped, renewed."""

    async def test_clients(self, h: Harness) -> None:
        meta = {"client_id": "c1", "redirect_uris": ["http://127.0.0.1:3000/cb"], "client_name": "Ç"}
        assert await h.store.get_client("c1") is None
        await h.store.put_client("c1", meta)
        assert await h.store.get_client("c1") == meta
        await h.store.put_client("c2", meta, ttl=SHORT_TTL_SECONDS)
        await h.pass_short_ttl()
        assert await h.store.get_client("c2") is None
        assert await h.store.get_client("c1") == meta

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

    async def test_registrations_are_capped_but_renewals_pass(self, h: Harness) -> None:
        meta = {"client_id": "x"}
        assert await h.store.put_client("a", meta, ttl=SHORT_TTL_SECONDS, max_clients=2)
        assert await h.store.put_client("b", meta, ttl=DAY, max_clients=2)
        assert not await h.store.put_client("c", meta, ttl=DAY, max_clients=2)
        assert await h.store.get_client("c") is None
        assert await h.store.put_client("a", meta, ttl=SHORT_TTL_SECONDS, max_clients=2)  # a renewal
        await h.pass_short_ttl()
        assert await h.store.put_client("c", meta, ttl=DAY, max_clients=2)  # "a" expired: room again


class LoginContract(_Contract):
    """``LoginStore``: authorization codes, pending logins and remembered consent: single use, sealed."""

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

    async def test_edited_consent_is_refused(self, h: Harness) -> None:
        await h.store.put_consent("user-1", "client-1", ["openid"], ttl=DAY)
        await h.store.put_consent("user-1", "client-2", ["openid", "admin"], ttl=DAY)
        key = h.keys.consent("user-1", "client-1")
        for forged in ('["openid", "admin"]', await h.raw.get(h.keys.consent("user-1", "client-2"))):
            assert forged is not None
            await h.raw.set(key, forged)
            with pytest.raises(RecordCorrupt):
                await h.store.get_consent("user-1", "client-1")


class TokenStoreContract(_Contract):
    """``TokenStore``: what holds across every record of a backend: nothing secret in clear, key rotation,
    reprs (DESIGN §6)."""

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

    async def test_reprs_show_no_secrets(self, h: Harness) -> None:
        creds = upstream(h.clock, tag="repr")
        grant = await new_grant(h, upstream=creds)
        pair = await issue(h, grant.grant_id)
        text = " ".join([repr(grant), str(grant), repr(pair), str(pair), repr(h.store), repr(h.keyring)])
        for secret in (creds.access_token, creds.refresh_token, creds.id_token, pair.access_token, pair.refresh_token):
            assert secret is not None and secret not in text
        assert "***" in text


CONTRACTS: tuple[type[_Contract], ...] = (
    LifecycleContract,
    GrantContract,
    ClientTokenContract,
    LockContract,
    ClientContract,
    LoginContract,
    TokenStoreContract,
)


def backend_suites(backend: type[Any], name: str) -> dict[str, type]:
    """One test class per contract for ``backend`` (a class whose ``h`` fixture yields its harness), named
    ``Test<name><Contract>`` so a failure names the backend and the protocol. A test module adds them to its
    globals, so every contract of :data:`CONTRACTS` runs on every backend."""
    suites: dict[str, type] = {}
    for contract in CONTRACTS:
        title = f"Test{name}{contract.__name__.removesuffix('Contract')}"
        suites[title] = type(title, (backend, contract), {"__module__": backend.__module__})
    return suites
