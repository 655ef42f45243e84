"""The one signing-key cache of gate and broker (``sidecar.keyset``): what the issuer's key endpoint sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.keyset import (
    KEYS_CACHE_SECONDS,
    KEYS_REFETCH_MIN_INTERVAL_SECONDS,
    KeySet,
    KeySetInvalid,
    KeySetUnavailable,
)
from tests.support.jwt_tokens import RsaIssuer


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def issuer() -> RsaIssuer:
    return RsaIssuer(kid="k1")


@pytest.fixture
async def keys(issuer: RsaIssuer, aiohttp_server: Any) -> AsyncIterator[tuple[KeySet, Monotonic]]:
    issuer.jwks_fetches, issuer.jwks_status = 0, 200
    server = await aiohttp_server(issuer.jwks_app())
    clock = Monotonic()
    async with aiohttp.ClientSession() as session:
        yield KeySet(session, str(server.make_url("/jwks.json")), monotonic=clock), clock


async def test_concurrent_callers_share_one_fetch(keys: tuple[KeySet, Monotonic], issuer: RsaIssuer) -> None:
    keyset, _ = keys
    found = await asyncio.gather(*(keyset.key("k1") for _ in range(5)))
    assert all(k is not None for k in found)
    assert issuer.jwks_fetches == 1


async def test_unknown_kids_refetch_at_most_once_per_interval(
    keys: tuple[KeySet, Monotonic], issuer: RsaIssuer
) -> None:
    keyset, clock = keys
    assert await keyset.key("k1") is not None
    for kid in ("forged-1", "forged-2", "forged-3"):
        assert await keyset.key(kid) is None
    assert issuer.jwks_fetches == 1
    clock.now += KEYS_REFETCH_MIN_INTERVAL_SECONDS
    assert await keyset.key("forged-4") is None
    assert await keyset.key("forged-5") is None
    assert issuer.jwks_fetches == 2


async def test_a_failed_refetch_keeps_the_stale_keys_and_waits_the_interval(
    keys: tuple[KeySet, Monotonic], issuer: RsaIssuer
) -> None:
    keyset, clock = keys
    assert await keyset.key("k1") is not None
    clock.now += KEYS_CACHE_SECONDS
    issuer.jwks_status = 503
    for _ in range(3):
        assert await keyset.key("k1") is not None
    assert issuer.jwks_fetches == 2
    issuer.jwks_status = 200
    clock.now += KEYS_REFETCH_MIN_INTERVAL_SECONDS
    assert await keyset.key("k1") is not None
    assert issuer.jwks_fetches == 3


async def test_no_keys_and_no_answer_is_unavailable(keys: tuple[KeySet, Monotonic], issuer: RsaIssuer) -> None:
    keyset, _ = keys
    issuer.jwks_status = 503
    with pytest.raises(KeySetUnavailable) as caught:
        await keyset.key("k1")
    assert caught.value.status == 503 and not isinstance(caught.value, KeySetInvalid)
    issuer.jwks_status = 200
    assert await keyset.key("k1") is not None  # nothing cached: the next caller tries again at once
