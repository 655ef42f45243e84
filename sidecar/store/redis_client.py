"""Connecting to Redis: the redis-py client for standalone, Sentinel or Cluster built from Settings, its pool,
retry and timeouts, the replica acknowledgement after a write, and the one exception translator.

Third-party exceptions are translated in one place, :func:`translate`, into :class:`StoreUnavailable`
(DESIGN §12, httpx's habit), whose message names the operation and the error class, never a secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from sidecar.config import Settings, parse_host_port
from sidecar.store.records import StoreUnavailable
from sidecar.store.redis_lua import LUA_TTL_TO_ITSELF

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
# Connections to Redis per process (standalone and Sentinel). redis-py's own default pool refuses the 101st
# concurrent command outright ("Too many connections", a 503 for that request); this pool lets a command wait
# for a free connection instead, up to redis_timeout_seconds, and allows enough for a thousand requests in flight.
REDIS_MAX_CONNECTIONS: Final = 256
# WAIT after a rotation (``redis_min_replica_acks``): how long a replica's acknowledgement is awaited at most.
# Replicas acknowledge every second on their own and at once on a WAIT (REPLCONF GETACK), so a healthy one
# answers in a round trip; the bound only caps what a dead replica costs the request, and stays below the
# command's own socket timeout (at most half of redis_timeout_seconds).
REPLICA_ACK_TIMEOUT_SECONDS: Final = 1.0


@asynccontextmanager
async def translate(operation: str) -> AsyncIterator[None]:
    """The one place where redis-py's (and the socket layer's) exceptions become :class:`StoreUnavailable`."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:  # OSError covers TimeoutError too
        raise StoreUnavailable(f"redis {operation} failed ({type(exc).__name__})") from exc


async def cluster_acks(client: RedisCluster, key: str, wait: tuple[str, int, int]) -> object:
    """WAIT on the node owning ``key``: a master's replication stream is ordered, so a replica that has
    acknowledged this connection's no-op write (the key's TTL set to itself) holds every write before it."""
    node = client.get_node_from_key(key)
    if node is None:
        return None
    commands = [PipelineCommand(0, "EVAL", LUA_TTL_TO_ITSELF, 1, key), PipelineCommand(1, *wait)]
    try:
        await node.execute_pipeline(commands)
    except (RedisError, RedisClusterException, OSError) as exc:
        return exc  # the node is going away: counted as a missing acknowledgement, the write stands
    return commands[1].result


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
