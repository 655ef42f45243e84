"""``make soak``: a long mixed run through one sidecar process, to see what grows.

Broker mode on a real Redis, with a rotating IdP whose access tokens expire every few seconds (so refreshes run
all along), an MCP stand-in answering JSON and SSE. Requests are spread over many grants, two JSON calls for each
SSE stream. At every tenth of the run it samples the sidecar's RSS and open file descriptors (from /proc) and the
p99 latency of the last tenth; at the end it prints start vs end.

    python -m tests.reliability.soak --requests 1000000 [--concurrency 32] [--grants 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from tests.reliability.harness import Sidecar
from tests.reliability.services import BackendProcess, RotatingIdP, broker_env, new_keys, seed_grants
from tests.support.redis_servers import random_prefix, start_server

SAMPLES = 10
TOKEN_LIFETIME = 5.0  # seconds an upstream access token lives: refreshes happen throughout the run


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values, default=0.0)


async def soak(total: int, concurrency: int, grants: int) -> int:
    redis = start_server()
    idp = await RotatingIdP(lifetime=TOKEN_LIFETIME).start()
    backend = BackendProcess()
    await backend.start()
    keys, prefix = new_keys(), random_prefix()
    env = broker_env(idp, keys, prefix, redis_url=redis.url, refresh_skew_seconds=1, token_cache_seconds=2)
    store = open_store(Settings.model_validate({"store": "redis", "redis_url": redis.url, "key_prefix": prefix}),
                       KeyRing.from_setting(keys))  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    sidecar = Sidecar(backend.url, env, log_dir=log_dir)
    failures: dict[str, int] = {}
    rows: list[tuple[int, int, int, float]] = []
    try:
        tokens = await seed_grants(store, idp, grants)
        sidecar.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            await sidecar.ready(session)
            assert sidecar.proc is not None
            pid = sidecar.proc.pid
            done = 0
            window: list[float] = []
            step = max(1, total // SAMPLES)
            started = time.monotonic()
            rows.append((0, rss_kib(pid), open_fds(pid), 0.0))

            async def client() -> None:
                nonlocal done
                while done < total:
                    done += 1
                    n = done
                    path = "/sse" if n % 3 == 0 else "/mcp"
                    token = random.choice(tokens)
                    t0 = time.perf_counter()
                    try:
                        async with session.post(sidecar.base + path, data=b'{"jsonrpc":"2.0","id":1,"method":"x"}',
                                                headers={"Authorization": f"Bearer {token}",
                                                         "Accept": "application/json, text/event-stream"}) as r:
                            await r.read()
                            if r.status != 200:
                                failures[str(r.status)] = failures.get(str(r.status), 0) + 1
                    except aiohttp.ClientError as exc:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    window.append(time.perf_counter() - t0)
                    if n % step == 0:
                        rows.append((n, rss_kib(pid), open_fds(pid), p99(window)))
                        window.clear()
                        rate = n / (time.monotonic() - started)
                        print(f"{n:>9} requests  rss {rows[-1][1] / 1024:6.1f} MiB  fds {rows[-1][2]:4}  "
                              f"p99 {rows[-1][3] * 1000:6.1f} ms  ({rate:.0f}/s)", flush=True)

            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.monotonic() - started
    finally:
        sidecar.kill()
        backend.kill()
        await idp.close()
        await store.close()
        redis.cleanup()
    first, last = rows[1], rows[-1]
    print(f"\nsoak: {total} requests ({total // 3} SSE, {grants} grants, {idp.rotations} upstream refreshes) "
          f"in {elapsed:.0f} s; failed: {failures or 0}")
    print(f"RSS {first[1] / 1024:.1f} MiB after the first tenth -> {last[1] / 1024:.1f} MiB at the end "
          f"({(last[1] - first[1]) / 1024:+.1f} MiB); open fds {first[2]} -> {last[2]}; "
          f"p99 {first[3] * 1000:.1f} ms -> {last[3] * 1000:.1f} ms")
    print(f"IdP: refresh-token reuse detected {idp.reuse_detected}, families lost {idp.lost_families()}")
    return 1 if failures or idp.lost_families() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--grants", type=int, default=200)
    args = parser.parse_args()
    return asyncio.run(soak(args.requests, args.concurrency, args.grants))


if __name__ == "__main__":
    sys.exit(main())
