"""What the Dockerfile promises, checked statically (tests/image/ builds and runs it where buildah can)."""

from __future__ import annotations

import json
import re

from tests.chart._support import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _stages() -> list[str]:
    parts = re.split(r"^FROM\s", DOCKERFILE, flags=re.MULTILINE)
    return ["FROM " + p for p in parts[1:]]


def _instructions(stage: str, name: str) -> list[str]:
    # Join continuation lines, then pick the instruction.
    joined = re.sub(r"\\\n\s*", " ", stage)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_multi_stage_on_a_slim_python_base() -> None:
    stages = _stages()
    assert len(stages) == 2
    for stage in stages:
        assert re.match(r"FROM \$\{BASE_IMAGE\} AS \w+", stage)
    # The default base stays the public slim Python image; BASE_IMAGE swaps it (make image: debootstrap).
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[1-9]$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^ARG BASE_IMAGE=python:\$\{PYTHON_VERSION\}-slim$", DOCKERFILE, flags=re.MULTILINE)


def test_final_stage_has_no_build_tools_and_runs_unprivileged() -> None:
    final = _stages()[-1]
    runs = " ".join(_instructions(final, "RUN"))
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in runs
    assert "COPY --from=build /opt/venv /opt/venv" in final
    (user,) = _instructions(final, "USER")
    assert user == "10001:10001"


def test_entrypoint_is_serve() -> None:
    (entrypoint,) = _instructions(_stages()[-1], "ENTRYPOINT")
    assert json.loads(entrypoint) == ["mcp-auth-sidecar", "serve"]
    assert "EXPOSE 8080 9090" in DOCKERFILE


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!sidecar/"} <= set(lines)
    # Everything the build stage copies is let through.
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE):
        for item in src.split():
            assert f"!{item}" in lines or f"!{item}/" in lines, item


def test_build_installs_exactly_the_lock() -> None:
    build = _stages()[0]
    runs = " ".join(_instructions(build, "RUN"))
    assert "uv sync --locked" in runs
    assert "--no-dev" in runs and "--no-editable" in runs
    # Nothing is resolved anew inside the image: no plain `pip install .` of the project.
    assert not re.search(r"pip install ['\"]?\.", runs)
    copies = " ".join(_instructions(build, "COPY"))
    assert "uv.lock" in copies
