"""Installs what the benchmark needs when it is missing: wrk, nginx-light and redis-server (apt),
matplotlib (pip, into the running venv), and FastMCP into its own venv ``bench/.venv-fastmcp``.

FastMCP never goes into the project's venv: it pins its own ``mcp`` SDK, and the tests need the project's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "redis-server": "redis-server"}
PIP_PACKAGES = {"matplotlib": "matplotlib>=3.8"}
FASTMCP_VENV = Path(__file__).resolve().parent / ".venv-fastmcp"
FASTMCP_REQUIREMENTS = ("fastmcp>=3", "uvloop>=0.19")


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories PATH often lacks (nginx lives in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _apt(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False)


def ensure_apt_binaries() -> dict[str, str | None]:
    """Path of each of wrk and nginx, installing the missing ones through apt; None if that failed."""
    found = {name: find_binary(name) for name in APT_PACKAGES}
    missing = [APT_PACKAGES[name] for name, path in found.items() if path is None]
    if missing:
        if shutil.which("apt-get") is None:
            _say(f"missing {', '.join(missing)} and no apt-get to install them with")
        else:
            _say(f"installing {' '.join(missing)} with apt-get")
            update = _apt(["update", "-qq"])
            install = _apt(["install", "-y", "-qq", "--no-install-recommends", *missing])
            if install.returncode != 0:
                err = (install.stderr or update.stderr).decode(errors="replace").strip()
                _say(f"apt-get install failed: {err[-500:]}")
        found = {name: find_binary(name) for name in APT_PACKAGES}
    return found


def ensure_python_packages() -> dict[str, bool]:
    """Whether each Python package the benchmark uses is importable, pip-installing it if not."""
    status: dict[str, bool] = {}
    for module, requirement in PIP_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            _say(f"installing {requirement} into {sys.prefix} with pip")
            result = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", requirement],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
            )
            if result.returncode != 0:
                _say(f"pip install {requirement} failed: {result.stderr.decode(errors='replace')[-500:]}")
            importlib.invalidate_caches()
        status[module] = importlib.util.find_spec(module) is not None
    return status


def _fastmcp_python() -> str | None:
    python = FASTMCP_VENV / "bin" / "python"
    if not python.exists():
        return None
    check = subprocess.run([str(python), "-c", "import fastmcp, uvicorn, uvloop"], capture_output=True, check=False)
    return str(python) if check.returncode == 0 else None


def fastmcp_version(python: str | None) -> str:
    if python is None:
        return "not installed"
    done = subprocess.run([python, "-c", "import fastmcp; print(fastmcp.__version__)"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() or "?"


def ensure_fastmcp(install: bool = True) -> tuple[str | None, str]:
    """The python of ``bench/.venv-fastmcp`` with FastMCP importable (creating the venv if ``install``), and
    why not when that failed."""
    python = _fastmcp_python()
    if python is not None or not install:
        return python, "" if python else f"no FastMCP in {FASTMCP_VENV} (--no-install)"
    _say(f"installing {' '.join(FASTMCP_REQUIREMENTS)} into {FASTMCP_VENV} (its own venv)")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(FASTMCP_VENV)],
        [str(FASTMCP_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *FASTMCP_REQUIREMENTS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(step[:3])}: {exc}"
        if done.returncode != 0:
            errors = [line for line in done.stderr.decode(errors="replace").splitlines()
                      if not line.startswith("WARNING:")]
            reason = " ".join(errors)[-400:] or f"exit code {done.returncode}"
            _say(f"FastMCP install failed: {reason}")
            return None, f"FastMCP could not be installed: {reason}"
    python = _fastmcp_python()
    return python, "" if python else "FastMCP installed but does not import"
