"""Pure parts of the store: token format, key layout, record lifetimes, codecs and the factory."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import MemoryTokenStore, open_store
from sidecar.store.base import (
    MIN_RECORD_TTL_MS,
    KeyLayout,
    ParsedToken,
    RecordCorrupt,
    TokenPair,
    UpstreamCredentials,
    decode_grant,
    grant_deadline_ms,
    mint_access_token,
    mint_refresh_token,
    new_grant_fields,
    new_grant_id,
    parse_client_token,
)
from sidecar.store.redis import REDIS_RETRIES, RedisTokenStore, build_client

GID = new_grant_id()
KEY = "k1:" + "A" * 43


def test_tokens_carry_kind_and_grant_id() -> None:
    at, rt = mint_access_token(GID), mint_refresh_token(GID)
    assert at.startswith(f"mcpat_{GID}.") and rt.startswith(f"mcprt_{GID}.")
    assert parse_client_token(at) == ParsedToken("access", GID)
    assert parse_client_token(rt) == ParsedToken("refresh", GID)
    assert at != mint_access_token(GID)
    for junk in ("", "mcpat_", f"mcpat_{GID}", f"mcpxx_{GID}.abcdefghijklmnopqrstuvwxyz", "eyJhbGciOi.x.y", at + " "):
        assert parse_client_token(junk) is None
    with pytest.raises(ValueError):
        mint_access_token("not-a-grant-id")


def test_every_grant_key_shares_the_hash_tag() -> None:
    keys = KeyLayout("mcpsc")
    tag = f"{{{GID}}}"
    for key in (keys.grant(GID), keys.index(GID), keys.lock(GID), keys.member_key(GID, "at:ab")):
        assert key.startswith(f"mcpsc:{tag}:")
    assert keys.grant(GID) == f"mcpsc:{tag}:grant"
    assert keys.lock(GID) == f"mcpsc:{tag}:lock"
    assert keys.client("c") == "mcpsc:client:c"
    assert keys.code("the-code").startswith("mcpsc:code:") and "the-code" not in keys.code("the-code")
    assert "state" not in keys.pending("state")
    with pytest.raises(ValueError):
        KeyLayout("a{b}")


def test_deadline_is_longest_credential_plus_grace() -> None:
    now = 1_000_000
    assert grant_deadline_ms(now + 5000, now + 9000, now, 100) == now + 9100
    assert grant_deadline_ms(now + 9000, 0, now, 100) == now + 9100
    assert grant_deadline_ms(0, 0, now, 100_000) == now + 100_000  # expired credentials: grace from now
    assert grant_deadline_ms(0, 0, now, 0) == now + MIN_RECORD_TTL_MS


def test_longest_expiry_ignores_absent_tokens_and_unknown_expiries() -> None:
    creds = UpstreamCredentials(access_token="a", access_expires_at=10, refresh_token="r", refresh_expires_at=None)
    assert creds.longest_expiry() == 10
    assert UpstreamCredentials(access_expires_at=50).longest_expiry() is None
    assert (
        UpstreamCredentials(access_token="a", id_token="i", access_expires_at=5, id_token_expires_at=7).longest_expiry()
        == 7
    )


def test_credentials_round_trip_and_hide_in_repr() -> None:
    creds = UpstreamCredentials("AT-x", "RT-x", "ID-x", 1.5, 2.5, 3.5)
    assert UpstreamCredentials.from_json(creds.to_json()) == creds
    assert "AT-x" not in repr(creds) and "RT-x" not in str(creds) and "ID-x" not in repr(creds)
    pair = TokenPair("A", 1.0, "R", 2.0)
    assert TokenPair.from_json(pair.to_json()) == pair
    assert "'A'" not in repr(pair) and "'R'" not in repr(pair)


def test_decode_grant_refuses_damaged_records() -> None:
    ring = KeyRing.from_setting(KEY)
    fields = new_grant_fields(keyring=ring, record_key="r", grant_id=GID, subject="s", client_id="c", scopes=["a"],
                              claims={}, upstream=UpstreamCredentials("a"), now_ms=1000)  # fmt: skip
    fields["exp"] = "5000"
    assert decode_grant(ring, "r", fields).upstream == UpstreamCredentials("a")
    for broken in ({"v": "1"}, {"idn": "{"}, {"gen": "x"}, {"claims": "[]"}, {"gid": "f" * 32}):
        with pytest.raises(RecordCorrupt):
            decode_grant(ring, "r", {**fields, **broken})
    with pytest.raises(RecordCorrupt):
        decode_grant(ring, "other-record", fields)


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


async def test_open_store_memory() -> None:
    store = open_store(settings(store="memory"), KeyRing.ephemeral())
    assert isinstance(store, MemoryTokenStore)
    await store.ping()


async def test_open_store_redis_modes_build_the_right_clients() -> None:
    ring = KeyRing.from_setting(KEY)
    standalone = open_store(settings(store="redis", redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=0.5), ring)
    assert isinstance(standalone, RedisTokenStore) and isinstance(standalone.client, Redis)
    kwargs = standalone.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5
    assert standalone.client.get_retry() is not None
    assert standalone.client.get_retry().get_retries() == REDIS_RETRIES  # type: ignore[union-attr]
    await standalone.close()

    tls = build_client(
        settings(store="redis", redis_url="redis://:in-url@h:6379/3", redis_tls=True, redis_password="pw")
    )
    assert isinstance(tls, Redis)
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"
    assert tls.connection_pool.connection_kwargs["password"] == "pw"  # the explicit setting wins over the URL
    assert tls.connection_pool.connection_kwargs["db"] == 3
    await tls.aclose()

    cluster = build_client(
        settings(store="redis", redis_mode="cluster", redis_cluster_nodes="127.0.0.1:7000,127.0.0.1:7001")
    )
    assert isinstance(cluster, RedisCluster)
    assert sorted(n.port for n in cluster.startup_nodes) == [7000, 7001]
    await cluster.aclose()

    sentinel = build_client(
        settings(
            store="redis", redis_mode="sentinel", redis_sentinels="127.0.0.1:26379", redis_sentinel_master="mymaster"
        )
    )
    assert isinstance(sentinel, Redis)
    assert sentinel.connection_pool.service_name == "mymaster"  # type: ignore[attr-defined]
    await sentinel.aclose()


def test_hiredis_parser_is_used() -> None:
    import redis.asyncio.connection

    assert redis.asyncio.connection.DefaultParser.__name__ == "_AsyncHiredisParser"


def test_redis_store_refuses_an_ephemeral_key() -> None:
    with pytest.raises(ValueError, match="encryption_keys"):
        open_store(settings(store="redis", redis_url="redis://127.0.0.1:1/0"), KeyRing.ephemeral())
