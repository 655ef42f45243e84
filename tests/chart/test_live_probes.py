"""The probes and the metrics port point at something real: start `mcp-auth-sidecar serve` with the
rendered container's arguments, environment and mounted config, and ask it what the kubelet and
Prometheus would ask. Only the listen addresses are moved to free loopback ports (via the environment,
which wins over the file), so parallel test runs cannot collide."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import helm_python as helm
import pytest

from tests.chart._support import (
    CI_DIR,
    SUBCHART_KEY,
    load_values,
    mounted_files,
    render_chart,
    resolve_env,
    sidecar_binary,
)

STARTUP_SECONDS = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def live_sidecar(own_chart: helm.Chart, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    values = {SUBCHART_KEY: load_values(CI_DIR / "own-chart-values.yaml")}
    deployed = render_chart(own_chart, values)
    _, pod = deployed.sidecar_pod()
    ctr = deployed.sidecar_container()
    workdir = tmp_path_factory.mktemp("live")
    path_map = {}
    for path, content in mounted_files(deployed, pod, ctr):
        local = workdir / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content, encoding="utf-8")
        path_map[path] = str(local)
    env = resolve_env(deployed, own_chart.merge_values(values)[SUBCHART_KEY], ctr["env"])
    env["MCP_SIDECAR_CONFIG"] = path_map[env["MCP_SIDECAR_CONFIG"]]
    http_port, metrics_port = _free_port(), _free_port()
    env |= {
        "MCP_SIDECAR_LISTEN": f"127.0.0.1:{http_port}",
        "MCP_SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
    }
    assert ctr["command"] == ["mcp-auth-sidecar"]
    argv = [sidecar_binary(), *[path_map.get(a, a) for a in ctr["args"]]]
    log = (workdir / "sidecar.log").open("w")
    proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert proc.poll() is None, (workdir / "sidecar.log").read_text()
            try:
                if _get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("sidecar did not answer /healthz:\n" + (workdir / "sidecar.log").read_text())
        yield {"container": ctr, "http": http_port, "metrics": metrics_port}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _probe_url(live: dict[str, object], probe: str) -> str:
    ctr = live["container"]
    assert isinstance(ctr, dict)
    get = ctr[probe]["httpGet"]
    assert get["port"] == "http"
    return f"http://127.0.0.1:{live['http']}{get['path']}"


def test_liveness_probe_answers(live_sidecar: dict[str, object]) -> None:
    assert _get(_probe_url(live_sidecar, "livenessProbe"))[0] == 200


def test_readiness_probe_answers(live_sidecar: dict[str, object]) -> None:
    assert _get(_probe_url(live_sidecar, "readinessProbe"))[0] == 200


def test_metrics_port_serves_prometheus(live_sidecar: dict[str, object]) -> None:
    status, body = _get(f"http://127.0.0.1:{live_sidecar['metrics']}/metrics")
    assert status == 200
    assert "# TYPE" in body


def test_service_port_reaches_the_auth_check(live_sidecar: dict[str, object]) -> None:
    # What the Service's targetPort "http" reaches: the sidecar, which challenges a request without a token.
    status, _ = _get(f"http://127.0.0.1:{live_sidecar['http']}/mcp")
    assert status == 401
