"""Installs what the benchmark needs when it is missing: wrk and nginx-light (apt), matplotlib (pip)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light"}
PIP_PACKAGES = {"matplotlib": "matplotlib>=3.8"}


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
