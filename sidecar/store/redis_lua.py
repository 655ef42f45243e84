"""The Redis store's Lua scripts (DESIGN §5, §7.3, §8).

Every multi-key script is passed all its keys in ``KEYS``, and all of them share one grant's hash tag, so
each runs on one Redis Cluster slot. Numbers travel as decimal strings; times are epoch milliseconds on the
caller's clock (ARGV).
"""

from __future__ import annotations

LUA_PRELUDE = """
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
LUA_CREATE = (
    LUA_PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
touch(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"""
)

# KEYS: grant, idx   ARGV: now, grace, min_ttl, expected_gen, up, up_exp, claims ('' keeps them)
# Returns the new generation, -1 if the grant is gone, -2 on a generation mismatch.
LUA_SET_UPSTREAM = (
    LUA_PRELUDE
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
LUA_ISSUE = (
    LUA_PRELUDE
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
LUA_ROTATE = (
    LUA_PRELUDE
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
LUA_LOOKUP = (
    LUA_PRELUDE
    + """
local v = redis.call('GET', KEYS[1])
if not v then return false end
if not live(KEYS[2], tonumber(ARGV[1])) then return false end
return v
"""
)

# KEYS: grant, idx, lock, token keys...   ARGV: the index members of those token keys, same order
# Returns {grant existed (0/1), index members left}.
LUA_DELETE = """
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
LUA_TTL_TO_ITSELF = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) end
return left
"""

# KEYS: lock   ARGV: owner. Release only the holder's lock (DESIGN §7.3).
# Admit a client registration under the global cap (issue 12).
# KEYS: registry zset   ARGV: now_ms, deadline_ms ('+inf' = none), max ('' = no cap), client_id
LUA_ADMIT_CLIENT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[3] ~= '' and not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
return 1
"""

LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
