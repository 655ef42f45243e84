"""Turns the measurements into figures and ratios: a Markdown table, a JSON file and a PNG chart."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.rows import BACKEND_LABELS, SERVICES
from bench.runner import Options, RowResult

MB = 1024 * 1024
X = "\N{MULTIPLICATION SIGN}"
NAN = float("nan")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else NAN


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else NAN


@dataclass
class Summary:
    """One row's figures over its rounds (medians), with the ratios to its baselines."""

    key: str
    label: str
    kind: str
    backend: str
    failure: str | None
    problems: list[str]
    rps: float = NAN  # median of the rounds, like p50/p99 and CPU
    rps_runs: list[float] = field(default_factory=list)
    p50_ms: float = NAN
    p99_ms: float = NAN
    errors: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)  # role -> µs/req (median of runs)
    cpu_runs: dict[str, list[float]] = field(default_factory=dict)  # role -> per run
    proxy_rss_mb: list[float] = field(default_factory=list)  # per process of the proxy, last run
    store: str | None = None  # service key of the row's store (Redis), if it has one
    store_rss_mb: float = NAN  # the store's RSS after the last run
    lat_p50_ms: float = NAN
    lat_p99_ms: float = NAN
    lat_errors: int = 0
    sse_first_ms: float = NAN
    sse_whole_ms: float = NAN
    sse_short: int = 0
    sse_streams: int = 0
    counters: dict[str, float] = field(default_factory=dict)  # per request, mean of the runs
    other_load_pct: float = NAN  # worst run: server-core time not spent by the row's own processes
    other_load_loadgen_pct: float = NAN  # worst run: load-generator-core time not spent by wrk or us
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None and bool(self.rps_runs)


def summarize(result: RowResult) -> Summary:
    row = result.row
    summary = Summary(row.key, row.label, row.kind, row.backend, result.failure, list(result.run_failures))
    if result.runs:
        summary.rps_runs = [run.rps for run in result.runs]
        summary.rps = _median(summary.rps_runs)
        summary.p50_ms = _median([run.p50_ms for run in result.runs])
        summary.p99_ms = _median([run.p99_ms for run in result.runs])
        summary.errors = sum(sum(run.errors.values()) for run in result.runs)
        names = {name for run in result.runs for name in run.counters_per_request}
        summary.counters = {
            name: _mean([run.counters_per_request.get(name, NAN) for run in result.runs]) for name in sorted(names)
        }
        others = [run.server_cores_unaccounted_pct for run in result.runs]
        summary.other_load_pct = max((v for v in others if math.isfinite(v)), default=NAN)
        others = [run.load_cores_unaccounted_pct for run in result.runs]
        summary.other_load_loadgen_pct = max((v for v in others if math.isfinite(v)), default=NAN)
        for run in result.runs:
            per_role: dict[str, float] = {}
            for key, micros in run.cpu_us_per_request.items():
                role = SERVICES[key].role
                per_role[role] = per_role.get(role, 0.0) + micros
            for role, micros in per_role.items():
                summary.cpu_runs.setdefault(role, []).append(micros)
        summary.cpu_us = {role: _median(values) for role, values in summary.cpu_runs.items()}
        last = result.runs[-1]
        summary.proxy_rss_mb = [
            rss / MB for key, values in last.rss_bytes.items() if SERVICES[key].role == "proxy" for rss in values
        ]
        stores = [key for key in last.rss_bytes if SERVICES[key].role == "store"]
        if stores:
            summary.store = stores[0]
            summary.store_rss_mb = sum(last.rss_bytes[stores[0]]) / MB
    pooled = [ms for lat in result.latency for ms in lat.samples_ms]
    if pooled:
        summary.lat_p50_ms = percentile(pooled, 50)
        summary.lat_p99_ms = percentile(pooled, 99)
    summary.lat_errors = sum(lat.errors for lat in result.latency)
    if result.sse:
        summary.sse_first_ms = _median([ms for sse in result.sse for ms in sse.first_event_ms])
        summary.sse_whole_ms = _median([ms for sse in result.sse for ms in sse.whole_stream_ms])
        summary.sse_short = sum(sse.short_streams for sse in result.sse)
        summary.sse_streams = sum(sse.streams for sse in result.sse)
    return summary


def add_ratios(summaries: Sequence[Summary]) -> None:
    """Ratios of each row to the direct row and to the bare proxy row on the same backend."""
    baselines = {(s.kind, s.backend): s for s in summaries if s.kind in ("direct", "bare") and s.ok}
    for s in summaries:
        direct = baselines.get(("direct", s.backend))
        bare = baselines.get(("bare", s.backend))
        if direct is not None:
            s.ratios["rps_vs_direct"] = s.rps / direct.rps
            s.ratios["lat_p50_delta_ms"] = s.lat_p50_ms - direct.lat_p50_ms
            s.ratios["lat_p99_delta_ms"] = s.lat_p99_ms - direct.lat_p99_ms
            s.ratios["sse_first_delta_ms"] = s.sse_first_ms - direct.sse_first_ms
            s.ratios["sse_whole_delta_ms"] = s.sse_whole_ms - direct.sse_whole_ms
        if bare is not None:
            s.ratios["rps_vs_bare"] = s.rps / bare.rps
            s.ratios["proxy_cpu_vs_bare"] = s.cpu_us.get("proxy", NAN) / bare.cpu_us.get("proxy", NAN)


# --- targets (issue 7) -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    check: Callable[[dict[str, Summary]], tuple[bool, str] | None]  # None: not measured in this run


def _find(summaries: dict[str, Summary], key: str) -> Summary | None:
    found = summaries.get(key)
    return found if found is not None and found.ok else None


def _gate_cpu(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    found = [s for b in ("aiohttp", "sdk") if (s := _find(summaries, f"sidecar-gate/{b}"))]
    if not found:
        return None
    ratios = {s.backend: s.ratios.get("proxy_cpu_vs_bare", NAN) for s in found}
    met = len(found) == 2 and all(r <= 0.75 for r in ratios.values())
    return met, ", ".join(f"{b}: {r:.2f}{X}" for b, r in ratios.items())


def _sdk_rps(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    found = _find(summaries, "sidecar-gate/sdk")
    if found is None:
        return None
    ratio = found.ratios.get("rps_vs_direct", NAN)
    return ratio >= 0.70, f"{ratio:.2f}{X} direct"


def _sse(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    found = _find(summaries, "sidecar-gate/aiohttp")
    if found is None or not found.sse_streams:
        return None
    delta = found.ratios.get("sse_first_delta_ms", NAN)
    return delta <= 0.3 and found.sse_short == 0, f"+{delta:.3f} ms, {found.sse_short} short streams"


def _rss(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    found = [s for s in summaries.values() if s.ok and s.kind == "sidecar" and s.proxy_rss_mb]
    if not found:
        return None
    worst = max(max(s.proxy_rss_mb) for s in found)
    return worst <= 60, f"max {worst:.1f} MB per process"


def _cpu_vs_bare(summaries: dict[str, Summary], variant: str, limit: float) -> tuple[bool, str] | None:
    found = [s for b in ("aiohttp", "sdk") if (s := _find(summaries, f"sidecar-{variant}/{b}"))]
    if not found:
        return None
    ratios = {s.backend: s.ratios.get("proxy_cpu_vs_bare", NAN) for s in found}
    return all(r <= limit for r in ratios.values()), ", ".join(f"{b}: {r:.2f}{X}" for b, r in ratios.items())


def _jwks_cpu(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    return _cpu_vs_bare(summaries, "gate-jwks", 0.8)


def _policy_cpu(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    return _cpu_vs_bare(summaries, "gate-policy", 0.8)


REDIS_COMMANDS = "Redis commands (upper bound on round trips)"  # bench.broker.redis_counters' name


def _redis_commands(s: Summary) -> float:
    return sum(value for name, value in s.counters.items() if name.endswith(REDIS_COMMANDS))


def _broker_redis(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    cpu = _cpu_vs_bare(summaries, "broker-redis", 0.9)
    found = [s for b in ("aiohttp", "sdk") if (s := _find(summaries, f"sidecar-broker-redis/{b}"))]
    if cpu is None or not found:
        return None
    trips = {s.backend: _redis_commands(s) for s in found}
    met = cpu[0] and all(t < 0.1 for t in trips.values())
    detail = "CPU " + cpu[1] + "; Redis commands/request (≥ round trips) " + ", ".join(
        f"{b}: {t:.3f}" for b, t in trips.items())
    return met, detail


def _rss_and_grants(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    rss = _rss(summaries)
    if rss is None:
        return None
    met, detail = rss
    one, many = _find(summaries, "sidecar-broker-redis/aiohttp"), _find(summaries, "sidecar-broker-redis-many/aiohttp")
    if one is None or many is None:
        return met, detail + "; grants comparison not measured"
    rps = many.rps / one.rps - 1
    mem = max(many.proxy_rss_mb) / max(one.proxy_rss_mb) - 1
    grants = many.label.split("Redis, ")[-1]
    met = met and abs(rps) <= 0.05 and abs(mem) <= 0.05
    return met, f"{detail}; {grants} vs 1: req/s {rps:+.1%}, RSS {mem:+.1%}"


def _fastmcp(summaries: dict[str, Summary]) -> tuple[bool, str] | None:
    peer = _find(summaries, "fastmcp/sdk")
    sidecars = [s for s in summaries.values() if s.ok and s.kind == "sidecar"]
    if peer is None or not sidecars:
        return None
    ratios = {s.key: s.rps / peer.rps for s in sidecars}
    worst = min(ratios, key=lambda key: ratios[key])
    detail = f"FastMCP {peer.rps:,.0f} req/s; lowest: {worst} {ratios[worst]:.1f}{X}"
    by_backend = {b: [r for k, r in ratios.items() if k.endswith("/" + b)] for b in ("aiohttp", "sdk")}
    detail += "; min per backend " + ", ".join(f"{b}: {min(r):.1f}{X}" for b, r in by_backend.items() if r)
    direct = _find(summaries, "direct/sdk")
    if direct is not None:
        detail += f" (the SDK server alone, direct, is {direct.rps / peer.rps:.1f}{X} FastMCP: its ceiling)"
    return all(r >= 25 for r in ratios.values()), detail


TARGETS: list[Target] = [
    Target(f"1. gate decode-only CPU ≤ 0.75{X} bare proxy, both backends", _gate_cpu),
    Target(f"2. gate with JWKS CPU ≤ 0.8{X} bare proxy", _jwks_cpu),
    Target(f"3. broker, warm grant, Redis: CPU ≤ 0.9{X} bare proxy, < 0.1 Redis round trips/request",
           _broker_redis),
    Target(f"4. in front of the mcp SDK server ≥ 0.70{X} direct req/s", _sdk_rps),
    Target("5. SSE first event ≤ direct + 0.3 ms, no event held back", _sse),
    Target("6. RSS ≤ 60 MB per worker; many grants within 5 % of 1 grant (req/s and RSS)", _rss_and_grants),
    Target(f"7. every sidecar row ≥ 25{X} FastMCP proxy req/s", _fastmcp),
    Target(f"8. gate with a 10-rule tool policy (2 CEL) CPU ≤ 0.80{X} bare proxy (issue 15)", _policy_cpu),
]


def evaluate_targets(summaries: Sequence[Summary]) -> list[dict[str, Any]]:
    by_key = {s.key: s for s in summaries}
    out = []
    for target in TARGETS:
        verdict = target.check(by_key)
        status = "not measured yet" if verdict is None else ("met" if verdict[0] else "NOT met")
        out.append({"target": target.name, "status": status, "detail": "" if verdict is None else verdict[1]})
    return out


# --- Markdown --------------------------------------------------------------------------------------------


def _num(value: float, fmt: str = ",.0f", suffix: str = "") -> str:
    return f"{value:{fmt}}{suffix}" if math.isfinite(value) else "—"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}{X}" if value is not None and math.isfinite(value) else "—"


def _delta(value: float | None) -> str:
    return f"{value:+.3f}" if value is not None and math.isfinite(value) else "—"


def _cell(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _spread(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return "" if len(finite) < 2 else f" ({min(finite):,.0f}\N{EN DASH}{max(finite):,.0f})"


def markdown(summaries: Sequence[Summary], meta: dict[str, Any], options: Options,
             targets: list[dict[str, Any]]) -> str:
    lines = [
        f"# Benchmark {'(quick) ' if meta.get('quick') else ''}— {meta['date']}",
        "",
        f"{meta['machine']}; servers pinned to CPU {meta['server_cpus']}, load generator to CPU "
        f"{meta['load_cpus']}. {meta['versions']}.",
        "",
        f"## Throughput: wrk -t{options.threads} -c{options.connections}, POST `tools/list` with a Bearer JWT, "
        f"{options.rounds} {X} {options.duration:g} s per row, interleaved",
        "",
        "req/s, latency and CPU are medians of the rounds (min\N{EN DASH}max in brackets); CPU is µs of CPU "
        "per request, user + system, of each process tree from /proc; "
        f"{X} columns are ratios to the direct row and to the bare aiohttp proxy on the same backend; proxy RSS "
        "is per process after the last round. *other load* is the share of the server core / of the load "
        "generator's core busy with anything but the row's own processes and wrk (other programs, "
        "interrupts) in the worst round: above ~10 % that row's figures are noisy.",
        "",
        f"| configuration | backend | req/s | {X} direct | {X} bare | p50 ms | p99 ms | proxy CPU µs/req "
        f"| proxy CPU {X} bare | backend CPU µs/req | proxy RSS MB | errors | other load % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        backend = BACKEND_LABELS.get(s.backend, s.backend)
        if not s.ok:
            reason = s.failure or "; ".join(s.problems) or "no measurement"
            lines.append(f"| {s.label} | {backend} | {_cell(reason)} | | | | | | | | | | |")
            continue
        proxy_cpu = s.cpu_us.get("proxy", NAN)
        rss = ", ".join(f"{mb:.0f}" for mb in s.proxy_rss_mb) or "—"
        lines.append(
            f"| {s.label} | {backend} | {_num(s.rps)}{_spread(s.rps_runs)} | {_ratio(s.ratios.get('rps_vs_direct'))} "
            f"| {_ratio(s.ratios.get('rps_vs_bare'))} | {_num(s.p50_ms, '.2f')} | {_num(s.p99_ms, '.2f')} "
            f"| {_num(proxy_cpu)}{_spread(s.cpu_runs.get('proxy', []))} "
            f"| {_ratio(s.ratios.get('proxy_cpu_vs_bare'))} | {_num(s.cpu_us.get('backend', NAN))} "
            f"| {rss} | {s.errors} | {_num(s.other_load_pct)} / {_num(s.other_load_loadgen_pct)} |"
        )
    lines += [
        "",
        f"## Added latency at a fixed {options.latency_rate:g} req/s (aiohttp client, open loop, "
        f"{options.latency_seconds:g} s per row and round in half-second slices taken in turn; percentiles of "
        "all rounds' requests)",
        "",
        "| configuration | backend | p50 ms | p99 ms | Δp50 vs direct ms | Δp99 vs direct ms | errors |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        if s.ok and math.isfinite(s.lat_p50_ms):
            lines.append(
                f"| {s.label} | {BACKEND_LABELS.get(s.backend, s.backend)} | {s.lat_p50_ms:.3f} | {s.lat_p99_ms:.3f} "
                f"| {_delta(s.ratios.get('lat_p50_delta_ms'))} | {_delta(s.ratios.get('lat_p99_delta_ms'))} "
                f"| {s.lat_errors} |"
            )
    sse_rows = [s for s in summaries if s.ok and s.sse_streams]
    if sse_rows:
        lines += [
            "",
            f"## SSE: {options.sse_events:,} events of {options.sse_event_bytes} B from the minimal backend "
            f"({options.sse_repeats} streams per row and round, one of each row in turn; medians of all streams)",
            "",
            "| path | first event ms | Δ vs direct ms | whole stream ms | Δ vs direct ms | short streams |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for s in sse_rows:
            lines.append(
                f"| {s.label} | {s.sse_first_ms:.3f} | {_delta(s.ratios.get('sse_first_delta_ms'))} "
                f"| {s.sse_whole_ms:.2f} | {_delta(s.ratios.get('sse_whole_delta_ms'))} "
                f"| {s.sse_short} of {s.sse_streams} |"
            )
    brokers = [s for s in summaries if s.ok and "broker" in s.key]
    if brokers:
        seeded: dict[str, dict[str, float]] = meta.get("seeded_stores", {})
        lines += [
            "",
            "## Broker mode: the store's cost per request (warm grant)",
            "",
            "Redis commands per request come from `INFO stats` `total_commands_processed` before and after each "
            "wrk run, less the benchmark's own `INFO` calls, divided by the requests: commands run inside Lua "
            "scripts count too and a pipeline is one round trip, so this is an upper bound on round trips. "
            "Redis CPU is the redis-server process's, from /proc.",
            "",
            "| configuration | backend | grants in the store | req/s | proxy CPU µs/req | Redis commands/req "
            "| new Redis connections/req | Redis CPU µs/req | Redis RSS MB | proxy RSS MB |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for s in brokers:
            grants = seeded.get(s.store or "", {}).get("grants", 1 if "memory" in s.key else NAN)
            connections = sum(v for n, v in s.counters.items() if n.endswith("Redis connections opened"))
            rss = ", ".join(f"{mb:.0f}" for mb in s.proxy_rss_mb) or "—"
            redis = s.store is not None
            lines.append(
                f"| {s.label} | {BACKEND_LABELS.get(s.backend, s.backend)} | {_num(grants)} | {_num(s.rps)} "
                f"| {_num(s.cpu_us.get('proxy', NAN))} | {_num(_redis_commands(s), '.3f') if redis else '—'} "
                f"| {_num(connections, '.4f') if redis else '—'} | {_num(s.cpu_us.get('store', NAN), '.1f')} "
                f"| {_num(s.store_rss_mb, '.1f')} | {rss} |"
            )
    counted = [(s, name, value) for s in summaries if s.ok for name, value in s.counters.items()]
    if counted:
        lines += ["", "## Counters per request (services' own counters, before and after each wrk run)", "",
                  "| configuration | backend | counter | per request |", "|---|---|---|--:|"]
        lines += [f"| {s.label} | {BACKEND_LABELS.get(s.backend, s.backend)} | {name} | {_num(value, '.3f')} |"
                  for s, name, value in counted]
    lines += ["", "## Targets (issue 7)", "", "| target | status | figures |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['status']} | {t['detail']} |" for t in targets]
    problems = [(s.label, s.backend, p) for s in summaries for p in s.problems]
    if problems:
        lines += ["", "## Problems during the run", ""]
        lines += [f"- {label} ({backend}): {_cell(p, 300)}" for label, backend, p in problems]
    return "\n".join(lines) + "\n"


# --- JSON ------------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON has no NaN: turn it into null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def as_json(results: Sequence[RowResult], summaries: Sequence[Summary], meta: dict[str, Any],
            options: Options, targets: list[dict[str, Any]]) -> str:
    rows = []
    for result, summary in zip(results, summaries, strict=True):
        raw = asdict(result)
        for lat in raw["latency"]:
            lat.pop("samples_ms", None)
        rows.append({**raw, "summary": {**asdict(summary), "ok": summary.ok}})
    document = {"meta": meta, "options": asdict(options), "rows": rows, "targets": targets}
    return json.dumps(_clean(document), indent=2, ensure_ascii=False) + "\n"


# --- chart -----------------------------------------------------------------------------------------------

KIND_COLORS = {"direct": "#7f7f7f", "nginx": "#2ca02c", "bare": "#ff7f0e", "sidecar": "#1f77b4", "peer": "#d62728"}


def chart(summaries: Sequence[Summary], path: Path, title: str) -> bool:
    """A PNG: req/s relative to direct, proxy CPU per request, added latency, SSE first event.

    False when matplotlib is missing or nothing was measured.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [s for s in summaries if s.ok]
    if not ok:
        return False

    def names(rows: Sequence[Summary]) -> list[str]:
        return [f"{s.label}\n→ {BACKEND_LABELS.get(s.backend, s.backend)}" for s in rows]

    def colors(rows: Sequence[Summary]) -> list[str]:
        return [KIND_COLORS.get(s.kind, "#9467bd") for s in rows]

    def finite(values: Sequence[float]) -> list[float]:
        return [v if math.isfinite(v) else 0.0 for v in values]

    y = list(range(len(ok)))
    fig, axes = plt.subplots(2, 2, figsize=(15, 3.0 + 1.1 * len(ok)), constrained_layout=True)
    fig.suptitle(title)

    ax = axes[0][0]
    relative = finite([s.ratios.get("rps_vs_direct", NAN) for s in ok])
    ax.barh(y, relative, color=colors(ok))
    for row, (s, value) in enumerate(zip(ok, relative, strict=True)):
        runs = [run / (s.rps / value) for run in s.rps_runs] if value else []
        ax.plot(runs, [row] * len(runs), "k|", markersize=12)
        ax.annotate(f" {value:.2f}{X}  ({s.rps:,.0f} req/s)", (max([value, *runs]), row), va="center",
                    fontsize=8)
    ax.set_xlim(0, max([*relative, 1.0]) * 1.45)
    ax.set_title("req/s relative to direct on the same backend (ticks: each round)")

    ax = axes[0][1]
    proxy_cpu = finite([s.cpu_us.get("proxy", NAN) for s in ok])
    # a peer ten times dearer would squash every other bar: the axis fits the others, its bar is cut
    scale = max([v for v, s in zip(proxy_cpu, ok, strict=True) if s.kind != "peer"] or proxy_cpu or [1.0])
    limit = max(scale, 1.0) * 1.6
    ax.barh(y, [min(v, limit) for v in proxy_cpu], color=colors(ok))
    for row, s in enumerate(ok):
        runs = [min(run, limit) for run in s.cpu_runs.get("proxy", [])]
        ax.plot(runs, [row] * len(runs), "k|", markersize=12)
        versus = s.ratios.get("proxy_cpu_vs_bare", NAN)
        if proxy_cpu[row]:
            note = f" {proxy_cpu[row]:,.0f} µs" + (f"  ({versus:.2f}{X} bare)" if math.isfinite(versus) else "")
            where = min(max([proxy_cpu[row], *runs]), limit * 0.62)
            ax.annotate(note, (where, row), va="center", fontsize=8)
    ax.set_xlim(0, limit)
    ax.set_title("proxy CPU µs per request (user + system, all its processes)")

    ax = axes[1][0]
    p50 = finite([s.ratios.get("lat_p50_delta_ms", NAN) for s in ok])
    ax.barh(y, p50, color=colors(ok))
    for row, s in enumerate(ok):
        p99 = s.ratios.get("lat_p99_delta_ms", NAN)
        if s.kind != "direct" and math.isfinite(p99):  # p99 is too noisy for a bar; the table has it
            ax.annotate(f" {p50[row]:+.2f} ms (p99 {p99:+.1f})", (max(p50[row], 0.0), row), va="center", fontsize=8)
        elif not math.isfinite(s.lat_p50_ms):
            ax.annotate(" not measured (slower than the fixed rate)", (0.0, row), va="center", fontsize=8)
    ax.axvline(0, color="k", linewidth=0.5)
    ax.set_xlim(min([*p50, 0.0]) * 1.2, max([*p50, 0.1]) * 1.8)
    ax.set_title("added p50 latency vs direct at a fixed rate, ms (p99 in brackets)")

    for axis in (axes[0][0], axes[0][1], axes[1][0]):
        axis.set_yticks(y, names(ok), fontsize=8)

    ax = axes[1][1]
    sse = [s for s in ok if s.sse_streams]
    if sse:
        sy = list(range(len(sse)))
        first = finite([s.sse_first_ms for s in sse])
        ax.barh(sy, first, color=colors(sse))
        for row, s in enumerate(sse):
            delta = s.ratios.get("sse_first_delta_ms", NAN)
            note = f" {first[row]:.3f} ms" + (f" (+{delta:.3f})" if math.isfinite(delta) and delta >= 0 else "")
            ax.annotate(note, (first[row], row), va="center", fontsize=8)
        ax.set_xlim(0, max([*first, 0.1]) * 1.45)
        ax.set_yticks(sy, names(sse), fontsize=8)
    ax.set_title("SSE time to first event, median (ms)")

    for axis in axes.flat:
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
