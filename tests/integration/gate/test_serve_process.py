"""``mcp-auth-sidecar serve`` as operators run it: a real process (and its workers), one port, JSON logs on stderr
from the first line with no token in them, metrics on their own port, a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.support.backends import EchoBackend, free_port
from tests.support.jwt_tokens import expired, valid

CLI = str(Path(sys.executable).parent / "mcp-auth-sidecar")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def listening(log: Path) -> int:
    """How many processes have logged that they listen (each worker logs it once its port is bound)."""
    count = 0
    for line in log.read_text().splitlines():
        try:
            count += json.loads(line).get("msg") == "listening"
        except ValueError:
            continue
    return count


async def wait_healthy(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path, workers: int
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited with {proc.returncode}:\n{log.read_text()}")
        if listening(log) >= workers:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the sidecar did not become healthy:\n{log.read_text()}")


def served_per_worker(prom_dir: Path) -> dict[int, float]:
    """Requests answered 200, per process, from the workers' own multi-process metric files."""
    out: dict[int, float] = {}
    for path in prom_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _name, sample_name, labels, _help = json.loads(key)
            if sample_name == "mcp_sidecar_requests_total" and labels == {"status": "200"}:
                out[pid] = out.get(pid, 0.0) + value
    return out


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_as_a_process(tmp_path: Path, start_backend: object, workers: int) -> None:
    backend = EchoBackend()
    server = await start_backend(backend.app())  # type: ignore[operator]
    port, metrics_port = free_port(), free_port()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SIDECAR_")}
    env.update(
        {
            "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
            "MCP_SIDECAR_LOG_LEVEL": "debug",  # the most talkative setting: still no token may appear
            "MCP_SIDECAR_BACKEND_TIMEOUT_SECONDS": "5",
            "MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": "0.2",  # no Kubernetes endpoint removal to wait for here
        }
    )
    argv = [
        CLI,
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--upstream",
        str(server.make_url("")).rstrip("/"),
        "--public-url",
        "https://mcp.example.com",
        "--workers",
        str(workers),
    ]
    good, stale = valid(), expired()
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        # A fresh connection per request: the kernel spreads connections over the workers sharing the port.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(session, base + "/healthz", proc, log, workers)
            worker_pids = children_of(proc.pid) if workers > 1 else [proc.pid]
            if workers > 1:
                assert len(worker_pids) == workers, worker_pids

            async def one(token: str) -> int:
                async with session.post(base + "/mcp", headers={"Authorization": f"Bearer {token}"}, data=b"{}") as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(one(good) for _ in range(60)))
            assert statuses == [200] * 60
            async with session.post(base + "/mcp", headers={"Authorization": f"Bearer {stale}"}) as resp:
                assert resp.status == 401
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
            async with session.get(base + "/mcp", headers={"Authorization": "Bearer " + "x" * 17000}) as resp:
                assert resp.status == 431
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                assert resp.status == 200
                exposition = await resp.text()
        assert len(backend.seen) == 60
        assert all(seen.get("Authorization") == f"Bearer {good}" for seen in backend.seen)

        # Metrics: one view over every worker, counting requests by status and rejections by reason.
        total_200 = re.search(r'^mcp_sidecar_requests_total\{status="200"\} (\S+)$', exposition, re.M)
        assert total_200 is not None and float(total_200.group(1)) == 60, exposition
        assert re.search(r'^mcp_sidecar_auth_rejections_total\{reason="expired"\} 1\.0$', exposition, re.M)
        if workers > 1:
            served = served_per_worker(prom_dir)
            busy = [pid for pid, count in served.items() if count > 0]
            assert len(busy) == workers, served  # both workers answered requests on the one port
            assert set(busy) <= set(worker_pids)

        # A clean stop on SIGTERM: exit code 0, no worker left behind.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(alive(pid) for pid in worker_pids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    stdout = proc.stdout.read() if proc.stdout else b""

    text = log.read_text()
    lines = text.splitlines()
    assert lines, "nothing was logged"
    for line in lines:  # JSON from the very first line
        entry = json.loads(line)
        assert {"level", "msg", "logger"} <= set(entry), line
    messages = [json.loads(line)["msg"] for line in lines]
    assert any("starting" in m for m in messages)
    assert any("shutting down" in m for m in messages)
    for secret in (good, stale, *good.split(".")[1:], *stale.split(".")[1:]):
        assert secret not in text, "a token leaked into the logs"
        assert secret.encode() not in stdout


async def test_a_dead_worker_is_replaced(tmp_path: Path, start_backend: object) -> None:
    backend = EchoBackend()
    server = await start_backend(backend.app())  # type: ignore[operator]
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_SIDECAR_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    env["MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS"] = "0.2"
    argv = [
        CLI, "serve",
        "--listen", f"127.0.0.1:{port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--upstream", str(server.make_url("")).rstrip("/"),
        "--public-url", "https://mcp.example.com",
        "--workers", "2",
    ]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            base = f"http://127.0.0.1:{port}"
            await wait_healthy(session, base + "/healthz", proc, log, 2)
            before = children_of(proc.pid)
            assert len(before) == 2
            os.kill(before[0], signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                now = [pid for pid in children_of(proc.pid) if alive(pid)]
                if len(now) == 2 and before[0] not in now:
                    break
                await asyncio.sleep(0.1)
            now = [pid for pid in children_of(proc.pid) if alive(pid)]
            assert len(now) == 2 and before[0] not in now, now
            await asyncio.sleep(0.5)  # the replacement binds its port
            for _ in range(20):
                headers = {"Authorization": f"Bearer {valid()}"}
                async with session.post(base + "/mcp", headers=headers, data=b"{}") as resp:
                    assert resp.status == 200
        assert any(json.loads(line).get("msg") == "worker died; restarting" for line in log.read_text().splitlines())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in now) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(alive(pid) for pid in now)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
