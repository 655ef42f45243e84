"""Broker mode rows: Redis servers, warm grants seeded through the store API, Redis counters.

A warm grant needs no login: the benchmark writes it with the sidecar's own store API exactly as the OAuth
callback would (``create_grant`` with upstream credentials valid for hours, then ``issue_tokens`` for a
minted client access token), so the request path never goes to the IdP. ``idp_issuer`` points at a port
nothing listens on: only a refresh or a login would contact it, and neither happens here.

* Redis rows: ``redis-server`` on a free loopback port, no persistence (``--save "" --appendonly no``); the
  service's ``after_start`` seeds the measured grant (and, for the many-grants row, filler grants first,
  each a real grant with its token pair, through ``asyncio.gather`` in batches: never raw writes that
  could bypass the record format) and keeps the client token for the wrk script.
* Memory rows: the grant has to live inside the sidecar process, so ``bench/broker_memory.py`` builds the
  app around a ``MemoryTokenStore`` it seeded itself and writes the client token to a file read here.

``redis_counters`` reads ``INFO stats`` over a raw socket (inline command: no ``HELLO``/``CLIENT SETINFO``
from a client library) and subtracts its own ``INFO`` calls, so the report's *Redis commands per request*
is what the sidecar sent. Commands that Lua scripts run count too (Redis counts them in
``total_commands_processed``), and a pipeline of several commands is one round trip: commands per request
is an upper bound on round trips per request.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from sidecar.config import Settings
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from sidecar.store.base import TokenStore, UpstreamCredentials, mint_access_token, mint_refresh_token

IDP_ISSUER = "http://127.0.0.1:9/bench-idp"  # discard port: never contacted (no refresh, no login)
KEY_PREFIX = "mcpsc"
SUBJECT = "bench-user@example.com"
SEED_BATCH = 64  # grants written concurrently by the seeder (redis-py pools 100 connections by default)

#: client access token of each seeded store, by store service key (read by ``bench.rows.TOKENS``)
CLIENT_TOKENS: dict[str, str] = {}
#: grants in each seeded store and how long seeding took, by store service key (reported in the JSON)
SEEDED: dict[str, dict[str, float]] = {}
_info_calls: dict[int, int] = {}


@functools.cache
def encryption_keys(command: tuple[str, ...]) -> str:
    """A key ring entry from ``mcp-auth-sidecar keygen``, one per benchmark run."""
    done = subprocess.run([*command, "keygen", "--kid", "bench"], capture_output=True, text=True, check=True,
                          timeout=60)
    return done.stdout.strip()


def redis_url(base: str) -> str:
    """``redis://`` URL of a service whose base URL the runner gives as ``http://127.0.0.1:<port>``."""
    return base.replace("http://", "redis://", 1) + "/0"


def broker_env(keys: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The sidecar's broker settings in its environment (``MCP_SIDECAR_<KEY>``), as an operator sets them."""
    return {
        "MCP_SIDECAR_IDP_ISSUER": IDP_ISSUER,
        "MCP_SIDECAR_IDP_CLIENT_ID": "bench-client",
        "MCP_SIDECAR_IDP_CLIENT_SECRET": "bench-secret",
        "MCP_SIDECAR_ENCRYPTION_KEYS": keys,
        "MCP_SIDECAR_KEY_PREFIX": KEY_PREFIX,
        **(extra or {}),
    }


def upstream_credentials(lifetime_seconds: float = 6 * 3600) -> UpstreamCredentials:
    """IdP tokens valid for hours: the broker injects them as they are, no refresh during the run."""
    now = time.time()
    return UpstreamCredentials(
        access_token="upstream-at-" + "x" * 900,  # about the size of a real IdP access token
        refresh_token="upstream-rt-" + "y" * 100,
        access_expires_at=now + lifetime_seconds,
        refresh_expires_at=now + 30 * 86400,
    )


async def seed_grant(store: TokenStore, subject: str = SUBJECT) -> str:
    """One warm grant with its client token pair, as the OAuth callback and token endpoint write them."""
    grant = await store.create_grant(
        subject=subject, client_id="bench-client", scopes=["openid", "email"],
        claims={"sub": subject, "email": subject}, upstream=upstream_credentials(),
    )
    access = mint_access_token(grant.grant_id)
    pair = await store.issue_tokens(
        grant.grant_id, access_token=access, refresh_token=mint_refresh_token(grant.grant_id),
        access_ttl=6 * 3600, refresh_ttl=30 * 86400,
    )
    if pair is None:
        raise RuntimeError("the store lost a grant it had just created")
    return access


async def seed_store(store: TokenStore, filler: int) -> tuple[str, float]:
    """``filler`` grants (in batches of ``SEED_BATCH``), then the measured one: its token, seconds taken."""
    started = time.monotonic()
    for first in range(0, filler, SEED_BATCH):
        last = min(filler, first + SEED_BATCH)
        await asyncio.gather(*(seed_grant(store, f"user-{index}@example.com") for index in range(first, last)))
    token = await seed_grant(store)
    return token, time.monotonic() - started


def redis_seeder(store_key: str, command: tuple[str, ...], filler: Callable[[], int]) -> Callable[
    [str], Awaitable[None]
]:
    """An ``after_start`` body: seed the Redis at ``base`` with ``filler()`` grants plus the measured one."""

    async def seed(base: str) -> None:
        keys = encryption_keys(command)
        settings = Settings.model_validate({
            "mode": "broker", "store": "redis", "redis_url": redis_url(base), "key_prefix": KEY_PREFIX,
            "encryption_keys": keys, "redis_timeout_seconds": 30,
        })
        store = open_store(settings, KeyRing.from_setting(keys))
        count = filler()
        try:
            token, seconds = await seed_store(store, count)
        finally:
            await store.close()
        CLIENT_TOKENS[store_key] = token
        SEEDED[store_key] = {"grants": count + 1, "seed_seconds": round(seconds, 1)}

    return seed


async def redis_info(port: int, section: str = "stats") -> dict[str, str]:
    """``INFO <section>`` as a dict, over a plain socket (an inline command, nothing else sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"INFO {section}\r\n".encode())
        await writer.drain()
        header = await reader.readline()  # $<length>\r\n
        if not header.startswith(b"$"):
            raise RuntimeError(f"unexpected INFO reply {header[:80]!r}")
        body = await reader.readexactly(int(header[1:]) + 2)
    finally:
        writer.close()
    _info_calls[port] = _info_calls.get(port, 0) + 1
    fields: dict[str, str] = {}
    for line in body.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name] = value
    return fields


async def redis_counters(port: int) -> dict[str, float]:
    """Commands Redis processed so far, less the ``INFO`` calls made here (each counts in the next read)."""
    stats = await redis_info(port)
    own = _info_calls[port] - 1  # this INFO is not counted yet in its own reply
    return {
        "Redis commands (upper bound on round trips)": float(stats["total_commands_processed"]) - own,
        "Redis connections opened": float(stats["total_connections_received"]) - _info_calls[port],
    }


def read_token_file(path: Path, timeout: float = 10.0) -> str:
    """The client token ``bench/broker_memory.py`` wrote once its grant was seeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        time.sleep(0.05)
    raise RuntimeError(f"{path} was not written: the memory-store sidecar did not seed its grant")
