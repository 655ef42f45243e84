"""Issue 10: every install path uses uv.lock, and what is installed is exactly what the lock says."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK = tomllib.loads((REPO / "uv.lock").read_text())


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, set[str]]:
    """Name -> the versions the lock holds (more than one where the resolution forks by Python version)."""
    out: dict[str, set[str]] = {}
    for p in LOCK["package"]:
        if "version" in p:
            out.setdefault(_norm(p["name"]), set()).add(p["version"])
    return out


def test_installed_versions_equal_the_lock() -> None:
    locked = _locked()
    installed = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    mismatched = {n: (installed[n], v) for n, v in locked.items() if n in installed and installed[n] not in v}
    assert not mismatched, f"installed != locked (installed, locked): {mismatched}; run `make test` to re-sync"
    # The packages the suite depends on are all there (markers may leave out platform-only ones elsewhere).
    for name in ("aiohttp", "redis", "mypy", "ruff", "pytest", "mcp", "cryptography", "pyjwt", "uv"):
        assert name in installed, f"{name} is locked but not installed"


def test_lock_agrees_with_pyproject() -> None:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        found = shutil.which("uv")
        if found is None:
            pytest.skip("uv is not installed in this environment")
        uv = Path(found)
    env = {**os.environ, "UV_OFFLINE": "1"}
    done = subprocess.run([str(uv), "lock", "--check"], cwd=REPO, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr


def test_environment_is_synchronized_with_the_lock() -> None:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.skip("uv is not installed in this environment")
    env = {**os.environ, "UV_OFFLINE": "1", "UV_PROJECT_ENVIRONMENT": str(Path(sys.prefix))}
    done = subprocess.run(
        [str(uv), "sync", "--locked", "--all-extras", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_every_install_path_uses_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^SYNC\s*:=\s*\$\(UV\) sync --locked ", makefile, flags=re.MULTILINE)
    assert "$(STAMP): pyproject.toml uv.lock" in makefile
    assert "pip install -e" not in makefile and "pip install --quiet -e" not in makefile
    ci = (REPO / ".ci" / "run").read_text()
    assert "make lock-check" in ci and "make test" in ci
    assert ci.index("\nmake lock-check") < ci.index("\nmake test")


def test_pyproject_keeps_ranges_not_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        assert "==" not in dep, f"{dep}: pyproject keeps honest ranges; exact versions live in uv.lock"
