"""A thousand grants expiring together while the IdP is slow (5 s), then down, then back: the sidecar keeps at most
idp_max_concurrency refreshes at the IdP, answers 503 + Retry-After once idp_timeout_seconds have passed, never
retries on its own (no storm), and recovers every grant with its rotated token (none lost)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from tests.reliability.harness import Sidecar, record
from tests.reliability.services import BackendProcess, RotatingIdP, broker_env, new_keys, seed_grants
from tests.support.redis_servers import HAVE_REDIS, NO_REDIS_REASON, RedisServer, random_prefix, start_server

pytestmark = pytest.mark.redis
GRANTS = int(os.environ.get("WAVE_GRANTS", "1000"))
IDP_TIMEOUT = 2.0
SLOW = 5.0
CONCURRENCY = 16  # the default of idp_max_concurrency
IDP_RETRY_AFTER_SECONDS = 5  # what the sidecar's 503 says; the clients here obey it
MAX_ROUNDS = 10


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if not HAVE_REDIS:
        pytest.skip(NO_REDIS_REASON)
    server = start_server()
    try:
        yield server
    finally:
        server.cleanup()


async def wave(
    session: aiohttp.ClientSession, url: str, tokens: list[str], failed: list[str] | None = None
) -> tuple[dict[int, int], int, float]:
    """One request per grant, all at once: statuses, 503s without Retry-After, seconds until the last answer.
    Tokens answered 503 are appended to ``failed`` (to retry them as a client would)."""
    statuses: dict[int, int] = {}
    missing_retry_after = 0
    started = time.monotonic()

    async def one(token: str) -> None:
        nonlocal missing_retry_after
        async with session.post(url, data=b"{}", headers={"Authorization": f"Bearer {token}"}) as r:
            await r.read()
            statuses[r.status] = statuses.get(r.status, 0) + 1
            if r.status == 503:
                if not r.headers.get("Retry-After", "").isdigit():
                    missing_retry_after += 1
                if failed is not None:
                    failed.append(token)

    await asyncio.gather(*(one(t) for t in tokens))
    return statuses, missing_retry_after, time.monotonic() - started


async def until_served(
    session: aiohttp.ClientSession, url: str, tokens: list[str]
) -> tuple[int, list[dict[int, int]]]:
    """Waves of the tokens not yet served, each after Retry-After, until every one got a 200 (never a 401)."""
    pending, rounds, backs = list(tokens), 0, []
    while pending:
        rounds += 1
        assert rounds <= MAX_ROUNDS, backs
        retry: list[str] = []
        back, missing, _ = await wave(session, url, pending, retry)
        backs.append(back)
        assert set(back) <= {200, 503} and missing == 0, back
        pending = retry
        if pending:
            await asyncio.sleep(IDP_RETRY_AFTER_SECONDS)
    return rounds, backs


async def test_refresh_wave_with_the_idp_slow_then_down_then_back(tmp_path: Path, redis: RedisServer) -> None:
    idp = await RotatingIdP().start()
    backend = BackendProcess()
    await backend.start()
    keys, prefix = new_keys(), random_prefix()
    env = broker_env(idp, keys, prefix, redis_url=redis.url, idp_timeout_seconds=IDP_TIMEOUT,
                     refresh_lock_seconds=IDP_TIMEOUT + 3)  # fmt: skip
    settings = Settings.model_validate({"store": "redis", "redis_url": redis.url, "key_prefix": prefix})
    store = open_store(settings, KeyRing.from_setting(keys))
    sidecar = Sidecar(backend.url, env, log_dir=tmp_path)
    try:
        tokens = await seed_grants(store, idp, GRANTS)
        sidecar.start()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await sidecar.ready(session)
            url = sidecar.base + "/mcp"

            idp.delay = SLOW
            slow, slow_missing, slow_took = await wave(session, url, tokens)
            slow_calls, slow_peak = idp.calls, idp.peak
            assert slow == {503: GRANTS}, slow
            assert slow_missing == 0
            assert slow_peak <= CONCURRENCY  # bounded
            # Each slot is held at most idp_timeout_seconds and a waiter gives up after as long: two rounds of
            # calls, three or four when the wave itself takes seconds to arrive (a loaded machine). Never 1,000.
            assert slow_calls <= 4 * CONCURRENCY, slow_calls
            assert slow_took < 2 * IDP_TIMEOUT + 10, slow_took  # the bound, plus a loaded machine
            assert idp.rotations == 0  # the IdP decided nothing for the requests the sidecar abandoned

            await idp.down()
            idp.delay = 0
            down, down_missing, down_took = await wave(session, url, tokens)
            assert down == {503: GRANTS}, down
            assert down_missing == 0
            assert idp.calls == slow_calls  # refused connections: nothing reached it, nothing retried

            await idp.up()
            back_at = time.monotonic()
            # Clients come back as told: the ones answered 503 retry after Retry-After (5 s) until served.
            rounds, backs = await until_served(session, url, tokens)
            recovered = time.monotonic() - back_at
            rotations = idp.rotations
            await until_served(session, url, tokens)  # the rotated tokens serve from now on, no new refresh
            assert idp.rotations == rotations
    finally:
        sidecar.kill()
        backend.kill()
        await idp.close()
        await store.close()
    assert idp.rotations == GRANTS  # one refresh per grant, no more
    assert idp.reuse_detected == 0 and idp.lost_families() == 0
    assert idp.peak <= CONCURRENCY
    record(
        f"IdP slow ({SLOW:g} s) during a wave of {GRANTS} expiring grants (idp_timeout_seconds {IDP_TIMEOUT:g})",
        saw=f"503 + Retry-After within {slow_took:.1f} s; {slow_calls} calls reached the IdP, "
            f"at most {slow_peak} at once",
        failed=GRANTS, total=GRANTS, grants_lost=0, recover_seconds=0.0,
    )  # fmt: skip
    record(
        "IdP down during the same wave, then back",
        saw=f"503 + Retry-After within {down_took:.1f} s; once back, clients retrying after Retry-After were all "
            f"served within {rounds} rounds, each grant refreshed exactly once",
        failed=GRANTS, total=GRANTS, grants_lost=0, recover_seconds=recovered,
    )  # fmt: skip
    print(f"idp wave: slow {slow} in {slow_took:.1f}s ({slow_calls} idp calls, peak {slow_peak}); "
          f"down {down} in {down_took:.1f}s; back in {rounds} rounds {backs}, {recovered:.1f}s")
