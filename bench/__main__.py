"""``python -m bench``: the sidecar and its peers side by side, in one run. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fnmatch
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import broker, report
from bench.procs import server_cpus
from bench.rows import FASTMCP_PROBLEM, FASTMCP_PYTHON, ROWS, SERVICES, Row
from bench.runner import Bench, Options, run_bench, say
from bench.tools import ensure_apt_binaries, ensure_fastmcp, ensure_python_packages, fastmcp_version, find_binary

RESULTS = Path(__file__).resolve().parent / "results"

QUICK = Options(duration=1.0, warmup=1.0, rounds=2, latency_seconds=0.5, sse_repeats=10, filler_grants=10_000)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes); writes quick.*")
    parser.add_argument("--rows", metavar="PATTERNS",
                        help="comma-separated globs on row keys, e.g. 'direct/*,sidecar-*' (default: all)")
    parser.add_argument("--list-rows", action="store_true", help="print the row keys and exit")
    parser.add_argument("--duration", type=float, help="seconds of wrk per row and round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (at least 2 to see noise)")
    parser.add_argument("--connections", type=int, help="wrk connections (default 50)")
    parser.add_argument("--latency-rate", type=float, help="req/s of the fixed-rate latency client (default 200)")
    parser.add_argument("--grants", type=int, dest="filler_grants",
                        help="grants in the many-grants Redis (default 100,000; 10,000 with --quick)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where results go (default bench/results)")
    parser.add_argument("--name", help="file name stem of the results (default: latest, or quick with --quick)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get/pip install what is missing")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (configs, server logs)")
    return parser


def _options(args: argparse.Namespace) -> Options:
    options = QUICK if args.quick else Options()
    overrides = {
        "duration": args.duration, "rounds": args.rounds, "connections": args.connections,
        "latency_rate": args.latency_rate, "filler_grants": args.filler_grants,
    }
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def _select(patterns: str | None, filler_grants: int) -> list[Row]:
    globs = [p.strip() for p in (patterns or "*").split(",") if p.strip()]
    grants = f"{filler_grants + 1:,}"  # the filler and the measured grant
    return [replace(row, label=row.label.replace("{grants}", grants)) for row in ROWS
            if any(fnmatch.fnmatch(row.key, g) or g in row.key for g in globs)]


def _needs(rows: list[Row]) -> set[str]:
    """Every service the rows go through, transitively."""
    found: set[str] = set()
    todo = [row.target for row in rows]
    while todo:
        key = todo.pop()
        if key not in found:
            found.add(key)
            todo.extend(SERVICES[key].needs)
    return found


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _meta(binaries: dict[str, str | None], quick: bool, servers: str | None, load: set[int] | None) -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx_bin, wrk_bin, redis_bin = binaries.get("nginx"), binaries.get("wrk"), binaries.get("redis-server")
    nginx = _version([nginx_bin, "-v"]) if nginx_bin else "not installed"
    wrk = _version([wrk_bin, "-v"]).split(" [")[0] if wrk_bin else "not installed"
    commit = _version(["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"])
    versions = {
        "python": platform.python_version(), "aiohttp": _package("aiohttp"), "uvloop": _package("uvloop"),
        "mcp": _package("mcp"), "uvicorn": _package("uvicorn"), "mcp-auth-sidecar": _package("mcp-auth-sidecar"),
        "nginx": nginx.removeprefix("nginx version: "), "wrk": wrk,
        "redis": _version([redis_bin, "--version"]).split(" sha=")[0].removeprefix("Redis server v=")
        if redis_bin else "not installed",
        "fastmcp": fastmcp_version(binaries.get(FASTMCP_PYTHON)), "commit": commit,
    }
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "machine": f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "server_cpus": servers or "not pinned (one CPU)",
        "load_cpus": ",".join(map(str, sorted(load))) if load else "not pinned",
        "versions_detail": versions,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_rows:
        for row in ROWS:
            print(f"{row.key:<36} {row.label} (target {row.target})")
        return 0
    options = _options(args)
    rows = _select(args.rows, options.filler_grants)
    if not rows:
        print(f"no row matches {args.rows!r}; see --list-rows", file=sys.stderr)
        return 2

    if args.no_install:
        binaries = {name: find_binary(name) for name in ("wrk", "nginx", "redis-server")}
    else:
        binaries = ensure_apt_binaries()
        ensure_python_packages()
    if any(key.startswith("fastmcp") for key in _needs(rows)):
        binaries[FASTMCP_PYTHON], binaries[FASTMCP_PROBLEM] = ensure_fastmcp(install=not args.no_install)
    if not binaries.get("wrk"):
        print("wrk is needed (apt-get install wrk)", file=sys.stderr)
        return 2

    servers, load = server_cpus()
    if load:
        os.sched_setaffinity(0, load)  # the Python clients (fixed rate, SSE) run here, like wrk
    meta = _meta(binaries, args.quick, servers, load)
    workdir = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    bench = Bench(options, rows, binaries, workdir, servers, load)
    say(f"{len(rows)} rows, {options.rounds} rounds of {options.duration:g} s; temp dir {workdir}")
    try:
        results = asyncio.run(run_bench(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: everything started was stopped, no results written")
        return 130
    finally:
        bench.stop_all()
        if args.keep_temp:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    ordered = [results[row.key] for row in rows]
    summaries = [report.summarize(result) for result in ordered]
    report.add_ratios(summaries)
    targets = report.evaluate_targets(summaries)
    meta["seeded_stores"] = dict(broker.SEEDED)
    stem = args.name or ("quick" if args.quick else "latest")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    table = report.markdown(summaries, meta, options, targets)
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(report.as_json(ordered, summaries, meta, options, targets))
    charted = report.chart(summaries, out / f"{stem}.png", f"mcp-auth-sidecar benchmark — {meta['date']}")
    print(table)
    written = [f"{stem}.md", f"{stem}.json"] + ([f"{stem}.png"] if charted else [])
    say(f"wrote {', '.join(str(out / name) for name in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
