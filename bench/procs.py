"""Processes the benchmark starts: launching (pinned with taskset), readiness, /proc sampling, stopping.

Every server is started in its own session (process group) so that stopping it also stops the workers
it forked (nginx's, the sidecar's ``--workers N``), and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class StartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its output."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_cpus() -> tuple[str | None, set[int] | None]:
    """(taskset list for servers, CPU set for the load generator), or (None, None) on a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return str(cpus[0]), set(cpus[1:])


@dataclass
class CpuSample:
    """CPU seconds (user + system) of each process of a tree at one moment, and their RSS in bytes."""

    cpu: dict[int, float]
    rss: dict[int, int]

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


def _read_stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of ``pid`` from /proc/<pid>/stat, or None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): ppid is field 4, utime 14, stime 15, rss 24 (pages).
    ppid = int(fields[1])
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = int(fields[21]) * PAGE_SIZE
    return ppid, cpu, rss


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (nginx workers, sidecar workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def sample(pids: Sequence[int]) -> CpuSample:
    cpu: dict[int, float] = {}
    rss: dict[int, int] = {}
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None:
            cpu[pid], rss[pid] = stat[1], stat[2]
    return CpuSample(cpu, rss)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies without stopping it (even SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Server:
    """One started server process (and the workers it forks)."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)

    def start(self, cpu_list: str | None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        """Start pinned to ``cpu_list`` (taskset), in a new session, output to ``log_path``."""
        argv, cpus = self.argv, None
        if cpu_list and shutil.which("taskset"):
            argv = ["taskset", "-c", cpu_list, *self.argv]
        elif cpu_list:  # no taskset: pin in the child before exec, the same thing
            cpus = {int(c) for c in cpu_list.split(",")}

        def before_exec() -> None:
            _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        full_env = {**os.environ, **(env or {})}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd, start_new_session=True, preexec_fn=before_exec,
            )

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the port accepts connections; raise StartError with the log tail if it never does."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(f"exited with code {self.process.returncode}: {self.tail()}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1.0)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            await asyncio.sleep(0.2)  # let multi-process servers bring up their workers
            self.pids = process_tree(self.process.pid)
            return
        raise StartError(f"not listening on port {self.port} after {timeout:.0f} s: {self.tail()}")

    def refresh_pids(self) -> list[int]:
        if self.process is not None and self.process.poll() is None:
            self.pids = process_tree(self.process.pid)
        return self.pids

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(grace)
        # workers that outlived their parent are still in the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def core_busy() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy seconds, total seconds) since boot, from /proc/stat (all but idle and iowait).

    Interrupt and softirq time count as busy: on loopback it is mostly our own traffic, and the kernel
    charges it to the process that was running, so the processes' CPU times include it too.
    """
    out: dict[int, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total = sum(ticks)
            out[int(name[3:])] = ((total - ticks[3] - ticks[4]) / CLOCK_TICKS, total / CLOCK_TICKS)
    return out


def busy_percent(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
                 cpus: set[int]) -> float:
    """How busy ``cpus`` were between two ``core_busy()`` samples, in percent of their capacity."""
    busy = sum(after[c][0] - before[c][0] for c in cpus if c in before and c in after)
    total = sum(after[c][1] - before[c][1] for c in cpus if c in before and c in after)
    return 100.0 * busy / total if total else float("nan")
