"""What the store contract suites (:mod:`tests.support.store_contract`) run on: a :class:`Harness` per
backend (memory, fakeredis, a real redis-server, a real Redis Cluster). The harness carries a :class:`FakeClock`
shared with the store and a :class:`RawView` that reads and writes the backend's raw records, so the suite can
check TTLs, prove that no secret is stored in clear, and tamper with ciphertexts.

Time: every record's logical expiry follows the injected clock, so the suite moves time with
``h.clock.advance``. Redis' own key expiry runs on real time; the few tests about keys that have only a Redis
TTL (locks, codes, pending logins, clients) use sub-second TTLs and a short real sleep as well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.crypto import KeyRing
from sidecar.store.base import (
    Grant,
    KeyLayout,
    TokenPair,
    TokenStore,
    UpstreamCredentials,
    mint_access_token,
    mint_refresh_token,
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
