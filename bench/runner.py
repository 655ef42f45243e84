"""Runs the rows: starts their services, checks them, measures them in interleaved rounds, stops all."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import loadgen
from bench.procs import Server, StartError, busy_percent, core_busy, free_port, sample
from bench.rows import SERVICES, TOKENS, Row, ServiceContext, ServiceSpec, Unavailable
from bench.workload import MCP_PATH, SSE_PATH, TOOLS_LIST_REQUEST, request_headers, sse_headers

_STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    duration: float = 5.0  # seconds of wrk per row and round
    warmup: float = 2.0  # seconds of wrk per row before the first round, not recorded
    rounds: int = 3  # the median of 3 shrugs off one disturbed round
    threads: int = 2
    connections: int = 50
    latency_rate: float = 200.0
    latency_seconds: float = 2.0
    sse_events: int = 1000
    sse_event_bytes: int = 200
    sse_repeats: int = 40
    filler_grants: int = 100_000  # grants in the many-grants Redis besides the measured one


@dataclass
class ThroughputRun:
    round: int
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int]
    cpu_us_per_request: dict[str, float]  # service key -> CPU µs per request, whole process tree
    cpu_us_per_process: dict[str, list[float]]  # service key -> CPU µs per request of each process
    rss_bytes: dict[str, list[int]]  # service key -> RSS of each process of its tree after the run
    pids: dict[str, list[int]]  # service key -> the processes the two lists above are about
    counters_per_request: dict[str, float]  # "<service key>: <counter>" -> increase per request
    server_cores_busy_pct: float  # how busy the servers' cores were (all processes), /proc/stat
    load_cores_busy_pct: float  # the load generator's: near 100 % means wrk, not the servers, was the limit
    server_cores_unaccounted_pct: float  # server-core time not spent by this row's processes: noise
    load_cores_unaccounted_pct: float  # load-generator-core time not spent by wrk or the benchmark: noise


@dataclass
class RowResult:
    row: Row
    failure: str | None = None
    runs: list[ThroughputRun] = field(default_factory=list)
    latency: list[loadgen.LatencyResult] = field(default_factory=list)
    sse: list[loadgen.SseResult] = field(default_factory=list)
    run_failures: list[str] = field(default_factory=list)


@dataclass
class RunningService:
    spec: ServiceSpec
    server: Server
    context: ServiceContext


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped children (wrk, once it has exited)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _unaccounted(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
                 cores: set[int], ours_seconds: float) -> float:
    """Percent of the capacity of ``cores`` that was busy with something else than ``ours_seconds``."""
    if not cores:
        return float("nan")
    busy = sum(after[c][0] - before[c][0] for c in cores)
    total = sum(after[c][1] - before[c][1] for c in cores)
    return 100.0 * (busy - ours_seconds) / total if total else float("nan")


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


class Bench:
    def __init__(
        self, options: Options, rows: Sequence[Row], binaries: dict[str, str | None], workdir: Path,
        server_cpus: str | None, load_cpus: set[int] | None,
    ) -> None:
        self.options = options
        self.rows = list(rows)
        self.binaries = binaries
        self.workdir = workdir
        self.server_cpus = server_cpus
        self.load_cpus = load_cpus
        self.server_core_set = {int(c) for c in server_cpus.split(",")} if server_cpus else set()
        self.services: dict[str, RunningService] = {}
        self.service_failures: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.scripts: dict[str, Path] = {}
        self.results = {row.key: RowResult(row) for row in self.rows}

    # --- services ---------------------------------------------------------------------------------------

    async def ensure_service(self, key: str) -> str | None:
        """Start ``key`` and what it needs, once; the failure message if any of them did not come up."""
        if key in self.services:
            return None
        if key in self.service_failures:
            return self.service_failures[key]
        spec = SERVICES[key]
        for need in spec.needs:
            failure = await self.ensure_service(need)
            if failure:
                self.service_failures[key] = f"{SERVICES[need].label} failed to start: {failure}"
                return self.service_failures[key]
        workdir = self.workdir / _slug(key)
        workdir.mkdir(parents=True, exist_ok=True)
        context = ServiceContext(
            key=key, port=free_port(), workdir=workdir,
            deps={need: self.services[need].context.url for need in spec.needs},
            binaries=self.binaries, free_port=free_port, filler_grants=self.options.filler_grants,
        )
        server: Server | None = None
        try:
            launch = spec.build(context)
            for name, content in launch.files.items():
                (workdir / name).write_text(content)
            server = Server(key, launch.argv, context.port, workdir / "output.log")
            say(f"starting {key} on 127.0.0.1:{context.port}")
            server.start(self.server_cpus, env=launch.env, cwd=workdir)
            await server.wait_ready(spec.ready_timeout)
            self.services[key] = RunningService(spec, server, context)
            if spec.after_start is not None:
                await spec.after_start(context)
        except Exception as exc:  # whatever goes wrong, this service's rows say so and the run goes on
            if server is not None:
                server.stop()
            self.services.pop(key, None)
            known = isinstance(exc, Unavailable | StartError)
            self.service_failures[key] = str(exc) if known else f"{exc!r}: {server.tail() if server else ''}"
            say(f"{key} failed to start: {exc}")
            return self.service_failures[key]
        return None

    def stop_all(self) -> None:
        for key in reversed(list(self.services)):
            self.services[key].server.stop()
        self.services.clear()

    def row_services(self, row: Row) -> list[str]:
        """The services a row's requests go through: its target and, transitively, what that needs."""
        ordered: list[str] = []
        todo = [row.target]
        while todo:
            key = todo.pop(0)
            if key not in ordered:
                ordered.append(key)
                todo.extend(SERVICES[key].needs)
        return ordered

    # --- rows ----------------------------------------------------------------------------------------------

    def url(self, row: Row, path: str) -> str:
        return f"{self.services[row.target].context.url}{path}"

    def token(self, row: Row) -> str:
        if row.token not in self.tokens:
            self.tokens[row.token] = TOKENS[row.token]()
        return self.tokens[row.token]

    def headers(self, row: Row) -> dict[str, str]:
        return request_headers(self.token(row))

    def script(self, row: Row) -> Path:
        if row.token not in self.scripts:
            path = self.workdir / f"wrk-{_slug(row.token)}.lua"
            self.scripts[row.token] = loadgen.write_wrk_script(path, self.headers(row))
        return self.scripts[row.token]

    async def check(self, row: Row) -> str | None:
        """One request before measuring: a row that does not answer 200 with tools is not measured."""
        try:
            async with aiohttp.ClientSession() as session, session.post(
                self.url(row, MCP_PATH), data=TOOLS_LIST_REQUEST, headers=self.headers(row),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"check request failed: {exc!r}"
        if response.status != 200 or b'"tools"' not in body:
            return f"check request answered HTTP {response.status}: {body[:300].decode(errors='replace')}"
        return None

    async def prepare(self) -> list[Row]:
        """Start every row's services and check it; the rows that can be measured."""
        ready = []
        for row in self.rows:
            failure = await self.ensure_service(row.target)
            if failure:
                self.results[row.key].failure = f"failed to start: {failure}"
                continue
            failure = await self.check(row)
            if failure:
                self.results[row.key].failure = failure
                say(f"{row.key}: {failure}")
                continue
            ready.append(row)
        return ready

    async def throughput(self, row: Row, round_index: int, duration: float) -> ThroughputRun:
        wrk = self.binaries["wrk"]
        assert wrk is not None
        services = self.row_services(row)
        pids = {key: self.services[key].server.refresh_pids() for key in services}
        counters_before = await self._counters(services)
        before = {key: sample(p) for key, p in pids.items()}
        cores_before = core_busy()
        ours_before = _own_cpu_seconds()
        result = await loadgen.run_wrk(
            wrk, self.url(row, MCP_PATH), self.script(row), duration=duration,
            threads=self.options.threads, connections=self.options.connections, cpus=self.load_cpus,
        )
        cores_after = core_busy()
        load_generator_seconds = _own_cpu_seconds() - ours_before  # wrk (a reaped child) and this process
        after = {key: sample(p) for key, p in pids.items()}
        counters_after = await self._counters(services)
        per_request = {
            name: (counters_after[name] - value) / max(result.requests, 1)
            for name, value in counters_before.items() if name in counters_after
        }
        cpu: dict[str, float] = {}
        per_process: dict[str, list[float]] = {}
        rss: dict[str, list[int]] = {}
        for key in services:
            measured = [pid for pid in pids[key] if pid in before[key].cpu and pid in after[key].cpu]
            micros = [(after[key].cpu[pid] - before[key].cpu[pid]) * 1e6 / max(result.requests, 1)
                      for pid in measured]
            cpu[key] = sum(micros) if result.requests else float("nan")
            per_process[key] = micros
            rss[key] = [after[key].rss[pid] for pid in measured]
        return ThroughputRun(
            round=round_index, rps=result.rps, requests=result.requests, p50_ms=result.p50_ms,
            p90_ms=result.p90_ms, p99_ms=result.p99_ms, errors=result.errors,
            cpu_us_per_request=cpu, cpu_us_per_process=per_process, rss_bytes=rss,
            pids={key: [pid for pid in pids[key] if pid in after[key].cpu] for key in services},
            counters_per_request=per_request,
            server_cores_busy_pct=busy_percent(cores_before, cores_after, self.server_core_set),
            load_cores_busy_pct=busy_percent(cores_before, cores_after, self.load_cpus or set()),
            server_cores_unaccounted_pct=_unaccounted(
                cores_before, cores_after, self.server_core_set, sum(cpu.values()) * result.requests / 1e6
            ),
            load_cores_unaccounted_pct=_unaccounted(
                cores_before, cores_after, self.load_cpus or set(), load_generator_seconds
            ),
        )

    async def _counters(self, services: Sequence[str]) -> dict[str, float]:
        values: dict[str, float] = {}
        for key in services:
            running = self.services[key]
            if running.spec.counters is not None:
                read = await running.spec.counters(running.context)
                values.update({f"{key}: {name}": value for name, value in read.items()})
        return values

    def alive(self, row: Row) -> str | None:
        for key in self.row_services(row):
            server = self.services[key].server
            if not server.alive():
                return f"{key} died: {server.tail()}"
        return None

    async def run(self) -> dict[str, RowResult]:
        opts = self.options
        rows = await self.prepare()
        if rows and opts.warmup > 0:
            say(f"warming up {len(rows)} rows, {opts.warmup:g} s each")
            for row in rows:
                await self._measure(row, -1, "warmup")
        for round_index in range(opts.rounds):
            order = rows if round_index % 2 == 0 else rows[::-1]
            for row in order:
                await self._measure(row, round_index, "throughput")
            await self._latency_phase([row for row in order if row.latency], round_index)
            await self._sse_phase([row for row in order if row.sse], round_index)
        return self.results

    async def _measure(self, row: Row, round_index: int, what: str) -> None:
        """One wrk run of ``row`` (``what``: ``warmup`` or ``throughput``); a failure is recorded, not raised."""
        result = self.results[row.key]
        opts = self.options
        when = "before round 1" if round_index < 0 else f"round {round_index + 1}/{opts.rounds}"
        label = f"{when} {what:<10} {row.key:<24}"
        dead = self.alive(row)
        if dead:
            result.run_failures.append(f"{when} {what}: {dead}")
            return
        try:
            run = await self.throughput(row, round_index, opts.warmup if what == "warmup" else opts.duration)
        except (RuntimeError, OSError, TimeoutError) as exc:
            result.run_failures.append(f"{when} {what}: {exc}")
            say(f"{label} failed: {exc}")
            return
        if what == "warmup":
            return
        result.runs.append(run)
        proxy = [f"{k} {v:,.0f} µs/req" for k, v in run.cpu_us_per_request.items()]
        errors = f", errors {run.errors}" if run.errors else ""
        cores = (f"  [server core {run.server_cores_busy_pct:.0f} % busy, "
                 f"{run.server_cores_unaccounted_pct:.0f} % not ours; load core {run.load_cores_busy_pct:.0f} % "
                 f"busy, {run.load_cores_unaccounted_pct:.0f} % not ours]")
        say(f"{label} {run.rps:9,.0f} req/s  p99 {run.p99_ms:6.2f} ms  {'; '.join(proxy)}{errors}{cores}")

    def _live(self, rows: Sequence[Row], round_index: int, what: str) -> list[Row]:
        live = []
        for row in rows:
            dead = self.alive(row)
            if dead:
                self.results[row.key].run_failures.append(f"round {round_index + 1} {what}: {dead}")
            else:
                live.append(row)
        return live

    async def _latency_phase(self, rows: Sequence[Row], round_index: int) -> None:
        """Fixed-rate latency of every row, in slices of about half a second taken in turn, so that a
        disturbance on the machine lands on all rows alike instead of on one."""
        opts = self.options
        rows = self._live(rows, round_index, "latency")
        clients = {row.key: loadgen.FixedRateClient(self.url(row, MCP_PATH), self.headers(row)) for row in rows}
        try:
            for client in clients.values():
                await client.warm()
            slices = max(1, round(opts.latency_seconds / 0.5))
            for index in range(slices):
                for row in rows if index % 2 == 0 else rows[::-1]:
                    await clients[row.key].run(opts.latency_rate, opts.latency_seconds / slices)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            for row in rows:
                self.results[row.key].run_failures.append(f"round {round_index + 1} latency: {exc}")
            return
        finally:
            for client in clients.values():
                await client.close()
        for row in rows:
            client = clients[row.key]
            lat = loadgen.LatencyResult.of(opts.latency_rate, client.sent, client.samples_ms, client.errors)
            self.results[row.key].latency.append(lat)
            say(f"round {round_index + 1}/{opts.rounds} latency    {row.key:<24} p50 {lat.p50_ms:.3f} ms  "
                f"p99 {lat.p99_ms:.3f} ms at {lat.rate:g} req/s")

    async def _sse_phase(self, rows: Sequence[Row], round_index: int) -> None:
        """SSE streams of every row, one stream of each row in turn."""
        opts = self.options
        rows = self._live(rows, round_index, "sse")
        path = f"{SSE_PATH}?events={opts.sse_events}&size={opts.sse_event_bytes}"
        clients = {row.key: loadgen.SseClient(self.url(row, path), sse_headers(self.token(row)), opts.sse_events)
                   for row in rows}
        try:
            for client in clients.values():
                await client.stream(record=False)  # warm the connection pools
            for index in range(opts.sse_repeats):
                for row in rows if index % 2 == 0 else rows[::-1]:
                    await clients[row.key].stream()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            for row in rows:
                self.results[row.key].run_failures.append(f"round {round_index + 1} sse: {exc}")
            return
        finally:
            for client in clients.values():
                await client.close()
        for row in rows:
            sse = clients[row.key].result
            self.results[row.key].sse.append(sse)
            say(f"round {round_index + 1}/{opts.rounds} sse        {row.key:<24} first event "
                f"{sse.first_event_median_ms:.3f} ms  whole stream {sse.whole_stream_median_ms:.2f} ms  "
                f"short {sse.short_streams}")


async def run_bench(bench: Bench) -> dict[str, RowResult]:
    """Run ``bench`` and stop everything it started, whatever happens (Ctrl-C and SIGTERM included)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        # SIGINT too: a benchmark started in the background of a script has SIGINT ignored otherwise
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, task.cancel)
    started = time.monotonic()
    try:
        return await bench.run()
    finally:
        bench.stop_all()
        say(f"stopped everything started; measuring took {time.monotonic() - started:.0f} s")
