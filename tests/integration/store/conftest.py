"""Real Redis for the store's integration tests, started by the fixtures in :mod:`tests.support.redis_servers`:
a redis-server, a master behind a Sentinel and a 3-master cluster, all on free loopback ports
(``REDIS_URL`` replaces the standalone one)."""

from __future__ import annotations

from tests.support.redis_servers import redis_cluster, redis_sentinel, redis_server, redis_url  # noqa: F401
