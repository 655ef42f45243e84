"""Bench-only launcher: the sidecar in broker mode on the memory store, with a warm grant seeded inside it.

The memory store lives in the sidecar's process, so nothing outside can seed it: this program builds the
settings the way ``mcp-auth-sidecar serve`` would get them (``MCP_SIDECAR_*`` from the environment, the
flags below), creates the ``MemoryTokenStore``, seeds one grant through the store API
(``bench.broker.seed_grant``), writes the client access token to ``--token-file``, and serves
``sidecar.app.build_app(settings, store=store)`` the way ``sidecar.server.serve`` does: uvloop, the
same runner (``sidecar.server._runner``), logging set up like the CLI's. One worker, no metrics port (the memory
store is single-process by design).

    python -m bench.broker_memory --port 8020 --upstream http://127.0.0.1:8001 --token-file token
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from aiohttp import web

from bench.broker import seed_store
from sidecar import logs, server
from sidecar.app import build_app
from sidecar.config import load_settings
from sidecar.crypto import KeyRing
from sidecar.store import MemoryTokenStore


async def run(args: argparse.Namespace) -> None:
    flags = {"listen": f"127.0.0.1:{args.port}", "upstream": args.upstream, "mode": "broker",
             "public_url": f"http://127.0.0.1:{args.port}", "metrics_listen": None, "workers": None}
    settings = load_settings(None, os.environ, flags)
    if settings.store != "memory":
        raise SystemExit("bench.broker_memory is for store: memory")
    assert settings.encryption_keys is not None, "set MCP_SIDECAR_ENCRYPTION_KEYS"
    store = MemoryTokenStore(KeyRing.from_setting(settings.encryption_keys), key_prefix=settings.key_prefix,
                             record_grace_seconds=settings.record_grace_seconds)
    token, _ = await seed_store(store, 0)
    runner = server._runner(build_app(settings, store=store), settings.request_header_timeout_seconds)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=server.LISTEN_BACKLOG)
    await site.start()
    args.token_file.write_text(token + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args()
    logs.setup("json", os.environ.get("MCP_SIDECAR_LOG_LEVEL", "info"))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
