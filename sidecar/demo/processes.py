"""Process plumbing shared by the demos: free ports, waiting for a server, running until Ctrl-C, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time

import aiohttp

STARTUP_TIMEOUT_SECONDS = 30.0
# Demo processes get this long to exit after SIGTERM before they are killed.
STOP_TIMEOUT_SECONDS = 10.0

MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}
TOOLS_LIST = '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    if preferred:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", preferred))
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    """Return once ``url`` answers below 500; exit with a clear message if ``proc`` dies or never answers."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited during start-up (code {proc.returncode}); see its output above")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.2)
    raise SystemExit(f"{name} did not start within {STARTUP_TIMEOUT_SECONDS:g} s")


def stop_on_signals() -> asyncio.Event:
    """Call first thing: from then on Ctrl-C / SIGTERM set the event instead of interrupting mid-start."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    return event


async def run_until_stopped(procs: list[subprocess.Popen[bytes]], stop: asyncio.Event) -> int:
    """Wait for the stop event (0) or for a demo process to die (1)."""
    while not stop.is_set():
        for proc in procs:
            if proc.poll() is not None:
                print(f"a demo process exited (code {proc.returncode}); stopping", file=sys.stderr)
                return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return 0


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
