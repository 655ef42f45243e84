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

Third-party exceptions are translated in one place, :func:`_translate`, into :class:`StoreUnavailable`
(DESIGN §12, httpx's habit), whose message names the operation and the error class, never a secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

from sidecar.config import Settings, parse_host_port
from sidecar.crypto import KeyRing
from sidecar.store.base import (
    CODE_TTL_SECONDS,
    MIN_RECORD_TTL_MS,
    PENDING_TTL_SECONDS,
    SUCCESSOR_SLACK_MS,
    AccessTokenInfo,
    Clock,
    Grant,
    KeyLayout,
    RotationOutcome,
    RotationResult,
    StoreUnavailable,
    TokenPair,
    UpstreamCredentials,
    access_member,
    check_token_for,
    check_ttl,
    decode_grant,
    encrypt_upstream,
    grant_deadline_ms,
    make_pair,
    new_grant_fields,
    new_grant_id,
    open_access_record,
    open_payload,
    open_scopes,
    open_successor,
    parse_client_token,
    refresh_member,
    refresh_record_genuine,
    seal_access_record,
    seal_claims,
    seal_payload,
    seal_refresh_record,
    seal_scopes,
    successor_member,
    to_ms,
    token_hash,
)

log = logging.getLogger("sidecar.store.redis")

RedisClient = Redis | RedisCluster

# One quick retry absorbs a pooled connection the server closed while idle; more retries (redis-py's default
# is 10 with backoff up to 1 s) would hold a request for seconds when Redis is really down, where the DESIGN
# §4 answer is an immediate 503 + Retry-After.
#
# A retry may run a command whose reply was lost a second time; every write here tolerates that: a rotation
# finds its own rotation and answers with the same pair (the replay grace), a compare-and-set sees its own
# generation and reports a lost race (the caller re-reads its own write), issue/delete/put are idempotent,
# and a repeated create reports StoreUnavailable rather than merging.
REDIS_RETRIES: Final = 1
REDIS_RETRY_BACKOFF_BASE_SECONDS: Final = 0.01
REDIS_RETRY_BACKOFF_CAP_SECONDS: Final = 0.1
# Grant deletion removes the grant's token keys in batches of this many per script call, well below Lua's
# stack limit for unpack() and short enough not to block Redis noticeably.
DELETE_BATCH: Final = 256
# A grant being deleted accepts no new tokens, so deletion converges; this bound only guards against a bug.
MAX_DELETE_PASSES: Final = 10_000
# Connections to Redis per process (standalone and Sentinel). redis-py's own default pool refuses the 101st
# concurrent command outright ("Too many connections", a 503 for that request); this pool lets a command wait
# for a free connection instead, up to redis_timeout_seconds, and allows enough for a thousand requests in flight.
REDIS_MAX_CONNECTIONS: Final = 256
# WAIT after a rotation (``redis_min_replica_acks``): how long a replica's acknowledgement is awaited at most.
# Replicas acknowledge every second on their own and at once on a WAIT (REPLCONF GETACK), so a healthy one
# answers in a round trip; the bound only caps what a dead replica costs the request, and stays below the
# command's own socket timeout (at most half of redis_timeout_seconds).
REPLICA_ACK_TIMEOUT_SECONDS: Final = 1.0

# ---------------------------------------------------------------------------------------------------------
# Lua. Numbers travel as decimal strings; times are epoch milliseconds on the caller's clock (ARGV).

_LUA_PRELUDE = """
local unpack = unpack or table.unpack
local function int(x) return string.format('%d', x) end
local function live(grant, now)
  local exp = redis.call('HGET', grant, 'exp')
  return exp and tonumber(exp) > now
end
-- DESIGN §5: the record lives until its longest live credential + grace; recomputed on every write.
local function touch(grant, idx, now, grace, min_ttl)
  local up = tonumber(redis.call('HGET', grant, 'up_exp') or '0') or 0
  local cl = tonumber(redis.call('HGET', grant, 'cl_exp') or '0') or 0
  local deadline = math.max(up, cl, now) + grace
  if deadline - now < min_ttl then deadline = now + min_ttl end
  redis.call('HSET', grant, 'exp', int(deadline))
  redis.call('PEXPIRE', grant, int(deadline - now))
  if redis.call('EXISTS', idx) == 1 then redis.call('PEXPIRE', idx, int(deadline - now)) end
end
-- Records a token pair. Without a refresh token (rt_exp == 0) the rt key is an unused placeholder.
-- at_value: the access token's sealed record; rt_seal: the refresh token's seal (sidecar.store.base), both
-- made by the caller, which holds the keys: a record written by anyone else does not open.
local function add_tokens(grant, idx, at, rt, gid, now, at_exp, rt_exp, at_member, rt_member, at_value, rt_seal)
  redis.call('SET', at, at_value, 'PX', int(at_exp - now))
  redis.call('ZADD', idx, int(at_exp), at_member)
  local cl = at_exp
  if rt_exp > 0 then
    redis.call('HSET', rt, 'state', 'active', 'exp', int(rt_exp), 'gid', gid, 'seal', rt_seal)
    redis.call('PEXPIRE', rt, int(rt_exp - now))
    redis.call('ZADD', idx, int(rt_exp), rt_member)
    cl = math.max(cl, rt_exp)
  end
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. int(now))
  local old = tonumber(redis.call('HGET', grant, 'cl_exp') or '0') or 0
  redis.call('HSET', grant, 'cl_exp', int(math.max(old, cl)), 'updated', int(now))
end
"""

# KEYS: grant, idx   ARGV: now, grace, min_ttl, field, value, ...
_LUA_CREATE = (
    _LUA_PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
touch(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"""
)

# KEYS: grant, idx   ARGV: now, grace, min_ttl, expected_gen, up, up_exp, claims ('' keeps them)
# Returns the new generation, -1 if the grant is gone, -2 on a generation mismatch.
_LUA_SET_UPSTREAM = (
    _LUA_PRELUDE
    + """
local now = tonumber(ARGV[1])
if not live(KEYS[1], now) then return -1 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen'))
-- DESIGN §7.3: compare-and-set on generation; a writer that lost the race re-reads instead.
if gen ~= tonumber(ARGV[4]) then return -2 end
redis.call('HSET', KEYS[1], 'gen', int(gen + 1), 'up', ARGV[5], 'up_exp', ARGV[6], 'updated', int(now))
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'claims', ARGV[7]) end
touch(KEYS[1], KEYS[2], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
return gen + 1
"""
)

# KEYS: grant, idx, at, rt   ARGV: now, grace, min_ttl, gid, at_exp, rt_exp (0: none), at_member, rt_member,
#                             at_value, rt_seal
_LUA_ISSUE = (
    _LUA_PRELUDE
    + """
local now = tonumber(ARGV[1])
if not live(KEYS[1], now) then return 0 end
add_tokens(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], now, tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], ARGV[8],
           ARGV[9], ARGV[10])
touch(KEYS[1], KEYS[2], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"""
)

# KEYS: grant, idx, old_rt, successor, new_at, new_rt
# ARGV: now, grace, min_ttl, gid, replay_grace, at_exp, rt_exp, successor_envelope, at_member, rt_member,
#       successor_member, successor_slack, at_value, rt_seal
_LUA_ROTATE = (
    _LUA_PRELUDE
    + """
local now = tonumber(ARGV[1])
if not live(KEYS[1], now) then return {'invalid'} end
local old = redis.call('HMGET', KEYS[3], 'state', 'exp', 'rotated_at')
if not old[1] or tonumber(old[2]) <= now then return {'invalid'} end
local replay_grace = tonumber(ARGV[5])
if old[1] == 'rotated' then
  -- DESIGN §8: a retry with the just-rotated token inside the grace gets the same new pair again.
  if replay_grace > 0 and now - tonumber(old[3]) <= replay_grace then
    local pair = redis.call('GET', KEYS[4])
    if pair then return {'replayed', pair} end
  end
  -- RFC 9700 §4.14.2: a reused refresh token means the family is compromised: revoke the grant now (every
  -- token of it stops working with it); the caller then removes the token keys.
  redis.call('DEL', KEYS[1])
  return {'reuse_detected'}
end
-- Single use: the old token is invalidated in the same step that issues the new pair.
redis.call('HSET', KEYS[3], 'state', 'rotated', 'rotated_at', int(now))
if replay_grace > 0 then
  local keep = replay_grace + tonumber(ARGV[12])
  redis.call('SET', KEYS[4], ARGV[8], 'PX', int(keep))
  redis.call('ZADD', KEYS[2], int(now + keep), ARGV[11])
end
add_tokens(KEYS[1], KEYS[2], KEYS[5], KEYS[6], ARGV[4], now, tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[9], ARGV[10],
           ARGV[13], ARGV[14])
touch(KEYS[1], KEYS[2], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
return {'rotated'}
"""
)

# KEYS: at, grant   ARGV: now
_LUA_LOOKUP = (
    _LUA_PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return false end
if not live(KEYS[2], tonumber(ARGV[1])) then return false end
return v
"""
)

# KEYS: grant, idx, lock, token keys...   ARGV: the index members of those token keys, same order
# Returns {grant existed (0/1), index members left}.
_LUA_DELETE = """
local unpack = unpack or table.unpack
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[3])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
if #ARGV > 0 then redis.call('ZREM', KEYS[2], unpack(ARGV)) end
local left = redis.call('ZCARD', KEYS[2])
if left == 0 then redis.call('DEL', KEYS[2]) end
return {existed, left}
"""

# KEYS: grant. A write that changes nothing (the TTL set to what is left of it) but enters the replication stream:
# what WAIT on a cluster node's connection measures (see RedisTokenStore._cluster_acks).
_LUA_TTL_TO_ITSELF = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) end
return left
"""

# KEYS: lock   ARGV: owner. Release only the holder's lock (DESIGN §7.3).
# Admit a client registration under the global cap (issue 12).
# KEYS: registry zset   ARGV: now_ms, deadline_ms ('+inf' = none), max ('' = no cap), client_id
_LUA_ADMIT_CLIENT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[3] ~= '' and not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
return 1
"""

_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@asynccontextmanager
async def _translate(operation: str) -> AsyncIterator[None]:
    """The one place where redis-py's (and the socket layer's) exceptions become :class:`StoreUnavailable`."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:  # OSError covers TimeoutError too
        raise StoreUnavailable(f"redis {operation} failed ({type(exc).__name__})") from exc


class RedisTokenStore:
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
        self._create = client.register_script(_LUA_CREATE)
        self._set_upstream_script = client.register_script(_LUA_SET_UPSTREAM)
        self._issue = client.register_script(_LUA_ISSUE)
        self._rotate = client.register_script(_LUA_ROTATE)
        self._lookup = client.register_script(_LUA_LOOKUP)
        self._delete = client.register_script(_LUA_DELETE)
        self._release = client.register_script(_LUA_RELEASE)
        self._admit_client = client.register_script(_LUA_ADMIT_CLIENT)

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._keys.prefix!r}, client={type(self._client).__name__})"

    @property
    def client(self) -> RedisClient:
        return self._client

    def _now_ms(self) -> int:
        return to_ms(self._clock())

    def _common(self, now_ms: int) -> list[str]:
        return [str(now_ms), str(self._grace_ms), str(MIN_RECORD_TTL_MS)]

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await script(keys=list(keys), args=list(args))

    @staticmethod
    async def _cluster_acks(client: RedisCluster, key: str, wait: tuple[str, int, int]) -> object:
        """WAIT on the node owning ``key``: a master's replication stream is ordered, so a replica that has
        acknowledged this connection's no-op write (the key's TTL set to itself) holds every write before it."""
        node = client.get_node_from_key(key)
        if node is None:
            return None
        commands = [PipelineCommand(0, "EVAL", _LUA_TTL_TO_ITSELF, 1, key), PipelineCommand(1, *wait)]
        try:
            await node.execute_pipeline(commands)
        except (RedisError, RedisClusterException, OSError) as exc:
            return exc  # the node is going away: counted as a missing acknowledgement, the write stands
        return commands[1].result

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
            acks = await self._cluster_acks(client, keys[0], wait)
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
                extra={"wanted": self._min_acks, "acks": acks if isinstance(acks, int) else None,
                       "timeout_ms": self._ack_timeout_ms},
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

    async def put_client(
        self, client_id: str, metadata: Mapping[str, Any], *, ttl: float | None = None, max_clients: int | None = None
    ) -> bool:
        px = None if ttl is None else check_ttl("ttl", ttl)
        now_ms = self._now_ms()
        key = self._keys.client(client_id)
        envelope = seal_payload(self._keyring, key, metadata)
        deadline = "+inf" if px is None else str(now_ms + px)
        limit = "" if max_clients is None else str(max_clients)
        async with _translate("put_client"):
            # The registry is one key (any cluster slot); the record is written after admission. Two racing
            # registrations may overshoot the cap by one each: it bounds abuse, it is not an exact quota.
            admitted = await self._run(self._admit_client, [self._keys.clients()], [str(now_ms), deadline, limit,
                                                                                     client_id])
            if int(admitted) != 1:
                return False
            await self._client.set(key, envelope, px=px)
        return True

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        key = self._keys.client(client_id)
        async with _translate("get_client"):
            value = await self._client.get(key)
        if value is None:
            return None
        return open_payload(self._keyring, key, cast(str, value))

    async def put_code(self, code: str, payload: Mapping[str, Any], *, ttl: float = CODE_TTL_SECONDS) -> None:
        await self._put_sealed("put_code", self._keys.code(code), payload, ttl)

    async def take_code(self, code: str) -> dict[str, Any] | None:
        return await self._take_sealed("take_code", self._keys.code(code))

    async def put_pending(self, state: str, payload: Mapping[str, Any], *, ttl: float = PENDING_TTL_SECONDS) -> None:
        await self._put_sealed("put_pending", self._keys.pending(state), payload, ttl)

    async def take_pending(self, state: str) -> dict[str, Any] | None:
        return await self._take_sealed("take_pending", self._keys.pending(state))

    async def _put_sealed(self, operation: str, key: str, payload: Mapping[str, Any], ttl: float) -> None:
        envelope = seal_payload(self._keyring, key, payload)
        async with _translate(operation):
            await self._client.set(key, envelope, px=check_ttl("ttl", ttl))

    async def _take_sealed(self, operation: str, key: str) -> dict[str, Any] | None:
        async with _translate(operation):
            envelope = await self._client.getdel(key)  # single use: atomic get-and-delete
        if envelope is None:
            return None
        return open_payload(self._keyring, key, cast(str, envelope))

    async def put_consent(self, subject: str, client_id: str, scopes: Sequence[str], *, ttl: float) -> None:
        key = self._keys.consent(subject, client_id)
        async with _translate("put_consent"):
            await self._client.set(key, seal_scopes(self._keyring, key, scopes), px=check_ttl("ttl", ttl))

    async def get_consent(self, subject: str, client_id: str) -> frozenset[str] | None:
        key = self._keys.consent(subject, client_id)
        async with _translate("get_consent"):
            value = await self._client.get(key)
        return None if value is None else open_scopes(self._keyring, key, cast(str, value))


# ---------------------------------------------------------------------------------------------------------
# Building the client from Settings


def _retry() -> Retry:
    return Retry(
        ExponentialBackoff(cap=REDIS_RETRY_BACKOFF_CAP_SECONDS, base=REDIS_RETRY_BACKOFF_BASE_SECONDS), REDIS_RETRIES
    )


def _nodes(entries: Sequence[str]) -> list[tuple[str, int]]:
    return [parse_host_port(entry) for entry in entries]


class _SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """The Sentinel-managed pool (finds the current master) with the blocking pool's wait for a free connection."""


def build_client(settings: Settings) -> RedisClient:
    """A redis-py asyncio client for ``redis_mode`` (standalone URL, Sentinel or Cluster).

    ``redis_timeout_seconds`` bounds connecting and each command's reply; ``redis_password`` (if set)
    overrides a password in the URL; ``redis_tls`` switches ``redis://`` to ``rediss://`` and enables TLS
    for Sentinel and Cluster connections.
    """
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "retry": _retry(),
    }
    if password is not None:
        common["password"] = password
    if settings.redis_mode == "cluster":
        nodes = [ClusterNode(host, port) for host, port in _nodes(settings.redis_cluster_nodes)]
        return RedisCluster(startup_nodes=nodes, ssl=settings.redis_tls, **common)
    if settings.redis_mode == "sentinel":
        if not settings.redis_sentinel_master:
            raise ValueError("redis_sentinel_master is required with redis_mode: sentinel")
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout_seconds,
            "socket_connect_timeout": settings.redis_timeout_seconds,
            "ssl": settings.redis_tls,
        }
        if password is not None:
            sentinel_kwargs["password"] = password
        sentinel = Sentinel(
            _nodes(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs, ssl=settings.redis_tls, **common
        )
        master = sentinel.master_for(
            settings.redis_sentinel_master,
            redis_class=Redis,
            connection_pool_class=_SentinelBlockingPool,
            max_connections=REDIS_MAX_CONNECTIONS,
            timeout=settings.redis_timeout_seconds,
        )
        return cast(Redis, master)
    if settings.redis_url is None:
        raise ValueError("redis_url is required with redis_mode: standalone")
    url = settings.redis_url.get_secret_value()
    if settings.redis_tls and url.startswith("redis://"):
        url = "rediss://" + url[len("redis://") :]
    # redis-py lets URL options win over keyword arguments; an explicit redis_password must win instead.
    options = {**parse_url(url), **common}
    pool = BlockingConnectionPool(max_connections=REDIS_MAX_CONNECTIONS, timeout=settings.redis_timeout_seconds,
                                  **options)  # fmt: skip
    return Redis.from_pool(pool)


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
