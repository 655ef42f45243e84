"""Redis ``TokenStore``: redis-py asyncio (hiredis parser), standalone, Sentinel or Cluster (DESIGN §5).

Every multi-key step is one Lua script whose keys all share the grant's hash tag ``{<grant-id>}`` and are
all passed in ``KEYS`` (the Redis Cluster rule for scripts), so the same code runs on a cluster:

* create / compare-and-set / drop of the upstream credentials (DESIGN §7.3: the generation check and the
  write are one step), each recomputing the record's deadline (longest live credential + grace);
* issuing a client token pair and single-use refresh-token rotation with the replay grace and reuse
  detection (DESIGN §8, RFC 9700 §4.14.2);
* access-token lookup (the token record *and* a live grant), lock release by owner, grant deletion.

Single-key steps use plain commands: ``SET NX PX`` for the refresh lock, ``GETDEL`` for single-use codes
and pending logins (RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once").

The redis-py client, its pool and the exception translator are :mod:`sidecar.store.redis_client`; the Lua
scripts are :mod:`sidecar.store.redis_lua`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store.codecs import (
    check_token_for,
    check_ttl,
    decode_grant,
    encrypt_upstream,
    grant_deadline_ms,
    make_pair,
    new_grant_fields,
    open_access_record,
    open_successor,
    refresh_record_genuine,
    seal_access_record,
    seal_claims,
    seal_refresh_record,
    to_ms,
)
from sidecar.store.layout import KeyLayout, access_member, refresh_member, successor_member
from sidecar.store.records import (
    MIN_RECORD_TTL_MS,
    SUCCESSOR_SLACK_MS,
    AccessTokenInfo,
    Clock,
    Grant,
    RotationOutcome,
    RotationResult,
    StoreUnavailable,
    TokenPair,
    UpstreamCredentials,
    new_grant_id,
    parse_client_token,
    token_hash,
)
from sidecar.store.redis_client import (
    REDIS_RETRIES,
    REPLICA_ACK_TIMEOUT_SECONDS,
    RedisClient,
    build_client,
    cluster_acks,
)
from sidecar.store.redis_client import translate as _translate
from sidecar.store.redis_logins import RedisLoginRecords
from sidecar.store.redis_lua import (
    LUA_ADMIT_CLIENT,
    LUA_CREATE,
    LUA_DELETE,
    LUA_ISSUE,
    LUA_LOOKUP,
    LUA_RELEASE,
    LUA_ROTATE,
    LUA_SET_UPSTREAM,
)

log = logging.getLogger("sidecar.store.redis")

# Grant deletion removes the grant's token keys in batches of this many per script call, well below Lua's
# stack limit for unpack() and short enough not to block Redis noticeably.
DELETE_BATCH: Final = 256
# A grant being deleted accepts no new tokens, so deletion converges; this bound only guards against a bug.
MAX_DELETE_PASSES: Final = 10_000


class RedisTokenStore(RedisLoginRecords):
    """:class:`~sidecar.store.base.TokenStore` on Redis. Build it with :func:`connect` or pass a client
    created with ``decode_responses=True`` (tests pass fakeredis)."""

    def __init__(
        self,
        client: RedisClient,
        keyring: KeyRing,
        *,
        key_prefix: str = "mcpsc",
        record_grace_seconds: float = 86400,
        clock: Clock = time.time,
        min_replica_acks: int = 0,
        replica_ack_timeout: float = REPLICA_ACK_TIMEOUT_SECONDS,
        on_replica_ack_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._min_acks = min_replica_acks
        self._ack_timeout_ms = max(1, to_ms(replica_ack_timeout))
        self._on_ack_timeout = on_replica_ack_timeout
        self._keyring = keyring
        self._keys = KeyLayout(key_prefix)
        self._grace_ms = to_ms(record_grace_seconds)
        self._clock = clock
        self._create = client.register_script(LUA_CREATE)
        self._set_upstream_script = client.register_script(LUA_SET_UPSTREAM)
        self._issue = client.register_script(LUA_ISSUE)
        self._rotate = client.register_script(LUA_ROTATE)
        self._lookup = client.register_script(LUA_LOOKUP)
        self._delete = client.register_script(LUA_DELETE)
        self._release = client.register_script(LUA_RELEASE)
        self._admit_client = client.register_script(LUA_ADMIT_CLIENT)

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._keys.prefix!r}, client={type(self._client).__name__})"

    @property
    def client(self) -> RedisClient:
        return self._client

    def _common(self, now_ms: int) -> list[str]:
        return [str(now_ms), str(self._grace_ms), str(MIN_RECORD_TTL_MS)]

    async def _run_acked(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run a write script, then ``WAIT`` until ``min_replica_acks`` replicas hold it.

        Replication is asynchronous: without this, a failover right after a rotation may promote a replica that
        still holds the rotated-away token (a rotating IdP then treats its next use as theft). ``WAIT`` counts
        the writes of *its own connection*, so script and WAIT travel together on one connection (a pipeline;
        on a cluster, the node that owns the grant's hash slot). Too few acknowledgements in time are logged and
        counted, never an error: the write itself succeeded on the master.
        """
        if self._min_acks <= 0:
            return await self._run(script, keys, args)
        client = self._client
        wait = ("WAIT", self._min_acks, self._ack_timeout_ms)
        acks: object
        if isinstance(client, RedisCluster):
            # The write takes the client's own path (redirections, topology refresh after a failover); the
            # acknowledgement is then asked for on the slot owner's connection, after a write of its own there.
            result = await self._run(script, keys, args)
            acks = await cluster_acks(client, keys[0], wait)
        else:
            pipe = client.pipeline(transaction=False)
            await script(keys=list(keys), args=list(args), client=pipe)
            pipe.execute_command(*wait)
            result, acks = await pipe.execute(raise_on_error=False)
        if isinstance(result, BaseException):
            raise result
        if isinstance(acks, BaseException) or not isinstance(acks, int) or acks < self._min_acks:
            log.warning(
                "a replica did not acknowledge a rotated token in time",
                extra={
                    "wanted": self._min_acks,
                    "acks": acks if isinstance(acks, int) else None,
                    "timeout_ms": self._ack_timeout_ms,
                },
            )
            if self._on_ack_timeout is not None:
                self._on_ack_timeout()
        return result

    # --- TokenStore ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        async with _translate("ping"):
            await self._client.ping()

    async def close(self) -> None:
        async with _translate("close"):
            await self._client.aclose()
            # A Sentinel-managed client's pool keeps the Sentinel's own clients; close those too.
            manager = getattr(getattr(self._client, "connection_pool", None), "sentinel_manager", None)
            for sentinel in getattr(manager, "sentinels", ()):
                await sentinel.aclose()

    async def create_grant(
        self,
        *,
        subject: str,
        client_id: str,
        scopes: Sequence[str],
        claims: Mapping[str, Any],
        upstream: UpstreamCredentials | None,
    ) -> Grant:
        now_ms = self._now_ms()
        grant_id = new_grant_id()
        key = self._keys.grant(grant_id)
        fields = new_grant_fields(
            keyring=self._keyring,
            record_key=key,
            grant_id=grant_id,
            subject=subject,
            client_id=client_id,
            scopes=scopes,
            claims=claims,
            upstream=upstream,
            now_ms=now_ms,
        )
        flat = [item for pair in fields.items() for item in pair]
        async with _translate("create_grant"):
            created = await self._run(self._create, [key, self._keys.index(grant_id)], self._common(now_ms) + flat)
        if int(created) != 1:  # a retried write whose first reply was lost (or 128 random bits collided)
            raise StoreUnavailable("redis create_grant failed (the new grant id was already present)")
        # The script computed the same deadline from the same inputs (see touch() in the Lua prelude).
        fields["exp"] = str(grant_deadline_ms(int(fields["up_exp"]), 0, now_ms, self._grace_ms))
        return decode_grant(self._keyring, key, fields)

    async def get_grant(self, grant_id: str) -> Grant | None:
        key = self._keys.grant(grant_id)
        async with _translate("get_grant"):
            fields = cast(dict[str, str], await self._client.hgetall(key))
        if not fields or int(fields.get("exp", "0")) <= self._now_ms():
            return None
        return decode_grant(self._keyring, key, fields)

    async def compare_and_set_upstream(
        self,
        grant_id: str,
        expected_generation: int,
        upstream: UpstreamCredentials,
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> bool:
        return await self._set_upstream(grant_id, expected_generation, upstream, claims, "compare_and_set_upstream")

    async def drop_upstream(self, grant_id: str, expected_generation: int) -> bool:
        return await self._set_upstream(grant_id, expected_generation, None, None, "drop_upstream")

    async def _set_upstream(
        self,
        grant_id: str,
        expected_generation: int,
        upstream: UpstreamCredentials | None,
        claims: Mapping[str, Any] | None,
        operation: str,
    ) -> bool:
        now_ms = self._now_ms()
        key = self._keys.grant(grant_id)
        envelope, up_exp = encrypt_upstream(self._keyring, key, upstream)
        claims_json = "" if claims is None else seal_claims(self._keyring, key, claims)
        args = [*self._common(now_ms), str(expected_generation), envelope, str(up_exp), claims_json]
        async with _translate(operation):
            # A rotated credential must survive a failover; a drop (upstream None) may be lost harmlessly.
            run = self._run if upstream is None else self._run_acked
            result = await run(self._set_upstream_script, [key, self._keys.index(grant_id)], args)
        return int(result) > 0

    async def delete_grant(self, grant_id: str) -> bool:
        keys = self._keys
        fixed = [keys.grant(grant_id), keys.index(grant_id), keys.lock(grant_id)]
        existed = False
        async with _translate("delete_grant"):
            for _ in range(MAX_DELETE_PASSES):
                members = cast(list[str], await self._client.zrange(keys.index(grant_id), 0, DELETE_BATCH - 1))
                token_keys = [keys.member_key(grant_id, m) for m in members]
                result = await self._run(self._delete, fixed + token_keys, members)
                existed = existed or int(result[0]) == 1
                if int(result[1]) == 0:
                    break
        return existed

    async def issue_tokens(
        self,
        grant_id: str,
        *,
        access_token: str,
        refresh_token: str | None,
        access_ttl: float,
        refresh_ttl: float,
    ) -> TokenPair | None:
        check_token_for(grant_id, access_token, "access")
        if refresh_token is not None:
            check_token_for(grant_id, refresh_token, "refresh")
        access_ttl_ms, refresh_ttl_ms = check_ttl("access_ttl", access_ttl), check_ttl("refresh_ttl", refresh_ttl)
        now_ms = self._now_ms()
        keys = self._keys
        at_member = access_member(token_hash(access_token))
        # Without a refresh token the rt key slot carries a never-written placeholder of the same hash tag.
        rt_member = refresh_member(token_hash(refresh_token)) if refresh_token else "rt:-"
        script_keys = [
            keys.grant(grant_id),
            keys.index(grant_id),
            keys.member_key(grant_id, at_member),
            keys.member_key(grant_id, rt_member),
        ]
        at_exp, rt_exp = now_ms + access_ttl_ms, now_ms + refresh_ttl_ms
        args = [
            *self._common(now_ms),
            grant_id,
            str(at_exp),
            str(rt_exp if refresh_token else 0),
            at_member,
            rt_member,
            seal_access_record(self._keyring, script_keys[2], at_exp, grant_id),
            seal_refresh_record(self._keyring, script_keys[3], rt_exp, grant_id) if refresh_token else "",
        ]
        async with _translate("issue_tokens"):
            issued = await self._run(self._issue, script_keys, args)
        if int(issued) != 1:
            return None
        return make_pair(access_token, refresh_token, now_ms, access_ttl_ms, refresh_ttl_ms)

    async def lookup_access_token(self, token: str) -> str | None:
        found = await self.find_access_token(token)
        return found.grant_id if found else None

    async def find_access_token(self, token: str) -> AccessTokenInfo | None:
        parsed = parse_client_token(token)
        if parsed is None or parsed.kind != "access":
            return None
        now_ms = self._now_ms()
        at_key = self._keys.member_key(parsed.grant_id, access_member(token_hash(token)))
        async with _translate("lookup_access_token"):
            value = await self._run(self._lookup, [at_key, self._keys.grant(parsed.grant_id)], [str(now_ms)])
        if not isinstance(value, str):
            return None
        return open_access_record(self._keyring, at_key, value, parsed.grant_id, now_ms)

    async def rotate_refresh_token(
        self,
        grant_id: str,
        old_refresh_token: str,
        *,
        new_access_token: str,
        new_refresh_token: str,
        access_ttl: float,
        refresh_ttl: float,
        replay_grace: float,
        scopes: Sequence[str] | None = None,
    ) -> RotationResult:
        check_token_for(grant_id, new_access_token, "access")
        check_token_for(grant_id, new_refresh_token, "refresh")
        access_ttl_ms, refresh_ttl_ms = check_ttl("access_ttl", access_ttl), check_ttl("refresh_ttl", refresh_ttl)
        parsed = parse_client_token(old_refresh_token)
        if parsed is None or parsed.kind != "refresh" or parsed.grant_id != grant_id:
            return RotationResult(RotationOutcome.INVALID)
        now_ms = self._now_ms()
        keys = self._keys
        digest = token_hash(old_refresh_token)
        successor_key = keys.member_key(grant_id, successor_member(digest))
        pair = make_pair(new_access_token, new_refresh_token, now_ms, access_ttl_ms, refresh_ttl_ms)
        at_member = access_member(token_hash(new_access_token))
        rt_member = refresh_member(token_hash(new_refresh_token))
        script_keys = [
            keys.grant(grant_id),
            keys.index(grant_id),
            keys.member_key(grant_id, refresh_member(digest)),
            successor_key,
            keys.member_key(grant_id, at_member),
            keys.member_key(grant_id, rt_member),
        ]
        args = [
            *self._common(now_ms),
            grant_id,
            str(to_ms(replay_grace)),
            str(now_ms + access_ttl_ms),
            str(now_ms + refresh_ttl_ms),
            self._keyring.encrypt(pair.to_json(), record_key=successor_key),
            at_member,
            rt_member,
            successor_member(digest),
            str(SUCCESSOR_SLACK_MS),
            seal_access_record(self._keyring, script_keys[4], now_ms + access_ttl_ms, grant_id, scopes),
            seal_refresh_record(self._keyring, script_keys[5], now_ms + refresh_ttl_ms, grant_id),
        ]
        old_key = script_keys[2]
        async with _translate("rotate_refresh_token"):
            # The old token's record must be ours (its seal never changes, so reading it first is safe).
            seal, exp = cast(list[str | None], await self._client.hmget(old_key, ["seal", "exp"]))
        if exp is not None and not refresh_record_genuine(self._keyring, old_key, seal, exp, grant_id):
            return RotationResult(RotationOutcome.INVALID)
        async with _translate("rotate_refresh_token"):
            reply = cast(list[str], await self._run_acked(self._rotate, script_keys, args))
        outcome = RotationOutcome(reply[0])
        if outcome is RotationOutcome.ROTATED:
            return RotationResult(outcome, pair)
        if outcome is RotationOutcome.REPLAYED:
            return RotationResult(outcome, open_successor(self._keyring, successor_key, reply[1]))
        if outcome is RotationOutcome.REUSE_DETECTED:
            # The script already deleted the grant record (revocation is effective); now remove its token keys.
            await self.delete_grant(grant_id)
        return RotationResult(outcome)

    async def revoke_token(self, token: str) -> bool:
        parsed = parse_client_token(token)
        if parsed is None:
            return False
        gid, digest = parsed.grant_id, token_hash(token)
        if parsed.kind == "access":
            async with _translate("revoke_token"):
                return int(await self._client.delete(self._keys.member_key(gid, access_member(digest)))) == 1
        async with _translate("revoke_token"):
            state = cast(
                list[str | None],
                await self._client.hmget(self._keys.member_key(gid, refresh_member(digest)), ["state", "exp"]),
            )
        if state[0] != "active" or state[1] is None or int(state[1]) <= self._now_ms():
            return False
        # RFC 7009 §2.1: revoking a refresh token SHOULD also invalidate the access tokens of the same grant.
        return await self.delete_grant(gid)

    async def acquire_lock(self, grant_id: str, owner: str, ttl_ms: int) -> bool:
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be positive")
        async with _translate("acquire_lock"):
            return bool(await self._client.set(self._keys.lock(grant_id), owner, nx=True, px=ttl_ms))

    async def release_lock(self, grant_id: str, owner: str) -> bool:
        async with _translate("release_lock"):
            return int(await self._run(self._release, [self._keys.lock(grant_id)], [owner])) == 1


def connect(
    settings: Settings,
    keyring: KeyRing,
    *,
    clock: Clock = time.time,
    on_replica_ack_timeout: Callable[[], None] | None = None,
) -> RedisTokenStore:
    """The Redis store described by ``settings`` (no I/O yet: call :meth:`RedisTokenStore.ping`)."""
    return RedisTokenStore(
        build_client(settings),
        keyring,
        key_prefix=settings.key_prefix,
        record_grace_seconds=settings.record_grace_seconds,
        clock=clock,
        min_replica_acks=settings.redis_min_replica_acks_effective,
        replica_ack_timeout=min(REPLICA_ACK_TIMEOUT_SECONDS, settings.redis_timeout_seconds / 2),
        on_replica_ack_timeout=on_replica_ack_timeout,
    )


__all__ = ["REDIS_RETRIES", "RedisClient", "RedisTokenStore", "build_client", "connect"]
