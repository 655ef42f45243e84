"""Load generators: wrk for throughput, an aiohttp loop for fixed-rate latency, an SSE stream timer.

All of them run on the load generator's core (wrk through taskset, the Python clients in the benchmark's
own process, which pins itself there).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.workload import TOOLS_LIST_REQUEST

WRK_MARKER = "BENCH_JSON "

# wrk's done() hook prints the summary as one JSON line, so nothing depends on wrk's human output.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [[{body}]]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%f,"max_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def write_wrk_script(path: Path, headers: Mapping[str, str], body: bytes = TOOLS_LIST_REQUEST) -> Path:
    lines = "\n".join(f'wrk.headers["{name}"] = [[{value}]]' for name, value in headers.items())
    path.write_text(WRK_SCRIPT.format(body=body.decode(), headers=lines, marker=WRK_MARKER))
    return path


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


async def run_wrk(
    wrk: str, url: str, script: Path, *, duration: float, threads: int, connections: int,
    cpus: set[int] | None,
) -> WrkResult:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "-s",
            str(script), url]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), duration + 30)
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith(WRK_MARKER):
            raw = json.loads(line[len(WRK_MARKER) :])
            return WrkResult(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                errors={k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
            )
    raise RuntimeError(f"wrk printed no summary (exit {process.returncode}): {(text + err.decode())[-500:]}")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class LatencyResult:
    rate: float
    sent: int
    p50_ms: float
    p99_ms: float
    errors: int
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, rate: float, sent: int, samples_ms: list[float], errors: int) -> LatencyResult:
        if not samples_ms:
            return cls(rate, sent, float("nan"), float("nan"), errors)
        return cls(rate, sent, percentile(samples_ms, 50), percentile(samples_ms, 99), errors, samples_ms)


class FixedRateClient:
    """Open-loop load: each request starts on schedule whether or not the previous ones finished.

    Latency runs from the request's start to the last byte of its body, so it is what a client sees.
    One keep-alive session per client, so slices of one row can be interleaved with other rows'.
    """

    def __init__(self, url: str, headers: Mapping[str, str], body: bytes = TOOLS_LIST_REQUEST) -> None:
        self.url = url
        self.body = body
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=dict(headers))
        self.samples_ms: list[float] = []
        self.sent = 0
        self.errors = 0

    async def close(self) -> None:
        await self.session.close()

    async def _one(self, record: bool) -> None:
        started = time.perf_counter()
        try:
            async with self.session.post(self.url, data=self.body) as response:
                await response.read()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        if record:
            self.sent += 1
            if ok:
                self.samples_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.errors += 1

    async def warm(self, requests: int = 20) -> None:
        """Sequential unrecorded requests: fill the connection pools of the client and of the proxy."""
        for _ in range(requests):
            await self._one(record=False)

    async def run(self, rate: float, duration: float) -> None:
        """``rate`` req/s for ``duration`` seconds, adding to ``samples_ms``."""
        start = time.perf_counter()
        tasks = []
        for index in range(max(1, int(rate * duration))):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(record=True)))
        await asyncio.gather(*tasks)


@dataclass
class SseResult:
    streams: int
    events_expected: int
    first_event_ms: list[float]
    whole_stream_ms: list[float]
    short_streams: int  # streams that ended with fewer events than expected, or failed

    @property
    def first_event_median_ms(self) -> float:
        return statistics.median(self.first_event_ms) if self.first_event_ms else float("nan")

    @property
    def whole_stream_median_ms(self) -> float:
        return statistics.median(self.whole_stream_ms) if self.whole_stream_ms else float("nan")


class SseClient:
    """Opens one SSE stream at a time and times its first complete event and its end."""

    def __init__(self, url: str, headers: Mapping[str, str], events: int) -> None:
        self.url = url
        self.result = SseResult(0, events, [], [], 0)
        self.session = aiohttp.ClientSession(headers=dict(headers), auto_decompress=False)

    async def close(self) -> None:
        await self.session.close()

    async def stream(self, record: bool = True) -> None:
        seen = 0
        first_at: float | None = None
        previous = b""
        started = time.perf_counter()
        try:
            async with self.session.get(self.url) as response:
                async for chunk in response.content.iter_any():
                    seen += (previous[-1:] + chunk).count(b"\n\n")  # events end with a blank line
                    previous = chunk
                    if first_at is None and seen:
                        first_at = time.perf_counter()
                ok = response.status == 200
        except aiohttp.ClientError:
            ok = False
        ended = time.perf_counter()
        if not record:
            return
        self.result.streams += 1
        if not ok or seen < self.result.events_expected or first_at is None:
            self.result.short_streams += 1
            return
        self.result.first_event_ms.append((first_at - started) * 1000)
        self.result.whole_stream_ms.append((ended - started) * 1000)
