"""Issue 16 §7: the Dockerfile is built here and its image run, as Kubernetes would run the chart's container.

`deploy/image/build.sh` (what `make image` runs) makes a minimal Debian base with debootstrap, imports it with
buildah and builds the Dockerfile on it through ``BASE_IMAGE``; `deploy/image/run.sh` runs the image's commands
as uid 10001 on a read-only root filesystem. Skipped, saying why, only where buildah cannot run at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.jwt_tokens import unsigned

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_SECONDS = 900
RUN_TIMEOUT_SECONDS = 60

# Building the image takes minutes the first time (debootstrap, then the Dockerfile); the rest is seconds.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_SECONDS + 300)


def _source_hash() -> str:
    digest = hashlib.sha256()
    files = [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "uv.lock", REPO / "README.md"]
    files += sorted(p for p in (REPO / "sidecar").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _why_buildah_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "building and running the image here needs root (buildah with vfs storage, unshare, chroot)"
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode != 0:
        return "this machine does not allow mount namespaces (unshare --mount), which running the image needs"
    if shutil.which("buildah") is None or shutil.which("debootstrap") is None:
        apt = subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap",
            shell=True, capture_output=True, check=False, timeout=600,
        )
        if apt.returncode != 0:
            return "buildah/debootstrap are not installed and apt could not install them"
    info = subprocess.run(["buildah", "info"], capture_output=True, check=False, env=_env())
    if info.returncode != 0:
        return f"buildah cannot run here: {info.stderr.decode(errors='replace')[:200]}"
    return None


def _env() -> dict[str, str]:
    return {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


@pytest.fixture(scope="module")
def image() -> str:
    why = _why_buildah_cannot_run()
    if why is not None:
        pytest.skip(why)
    tag = f"localhost/mcp-auth-sidecar:src-{_source_hash()}"
    found = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, check=False, env=_env())
    if found.returncode != 0:
        built = subprocess.run(
            [str(REPO / "deploy/image/build.sh"), tag],
            capture_output=True, text=True, check=False, env=_env(), timeout=BUILD_TIMEOUT_SECONDS,
        )
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        _remove_older_builds(keep=tag)
    return tag


def _remove_older_builds(keep: str) -> None:
    """Each source change is a new tag; vfs storage keeps whole copies, so older test builds go."""
    listed = subprocess.run(
        ["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], capture_output=True, text=True, check=False, env=_env()
    )
    for name in listed.stdout.split():
        if name.startswith("localhost/mcp-auth-sidecar:src-") and name != keep:
            subprocess.run(["buildah", "rmi", "-f", name], capture_output=True, check=False, env=_env())


def _run(image: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "deploy/image/run.sh"), image, *argv],
        capture_output=True, text=True, check=False, env={**_env(), **(env or {})}, timeout=RUN_TIMEOUT_SECONDS,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_runs_unprivileged_on_a_read_only_root(image: str) -> None:
    done = _run(image, "sh", "-c", "id -u; id -g; touch /probe 2>&1 || true; touch /tmp/ok && echo tmp-writable")
    lines = done.stdout.splitlines()
    assert lines[:2] == ["10001", "10001"]
    assert "Read-only file system" in done.stdout
    assert "tmp-writable" in done.stdout


def test_keygen_and_check_config(image: str) -> None:
    key = _run(image, "mcp-auth-sidecar", "keygen")
    assert key.returncode == 0, key.stderr
    kid, _, secret = key.stdout.strip().partition(":")
    assert kid and len(secret) == 43
    ok = _run(image, "mcp-auth-sidecar", "check-config",
              env={"MCP_SIDECAR_UPSTREAM": "http://127.0.0.1:9", "MCP_SIDECAR_PUBLIC_URL": "http://127.0.0.1:8080"})
    assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok.stdout + ok.stderr
    bad = _run(image, "mcp-auth-sidecar", "check-config", env={"MCP_SIDECAR_UPSTREAM": "not a url"})
    assert bad.returncode != 0
    assert "upstream" in bad.stdout + bad.stderr


@pytest.fixture
def backend() -> Iterator[int]:
    """A plain HTTP backend on host loopback (the image shares the host's network)."""
    port = _free_port()
    code = (
        "import http.server,sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_POST(self):\n"
        "        n=int(self.headers.get('Content-Length','0')); self.rfile.read(n)\n"
        "        body=b'{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"from\":\"backend\"}}'\n"
        "        self.send_response(200); self.send_header('Content-Type','application/json')\n"
        "        self.send_header('Content-Length',str(len(body))); self.end_headers(); self.wfile.write(body)\n"
        "    def log_message(self,*a): pass\n"
        f"http.server.HTTPServer(('127.0.0.1',{port}),H).serve_forever()\n"
    )
    proc = subprocess.Popen(["python3", "-c", code])
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


def _wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")


def test_serve_relays_a_checked_request(image: str, backend: int) -> None:
    port, metrics = _free_port(), _free_port()
    env = {
        **_env(),
        "MCP_SIDECAR_UPSTREAM": f"http://127.0.0.1:{backend}",
        "MCP_SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "MCP_SIDECAR_LISTEN": f"127.0.0.1:{port}",
        "MCP_SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics}",
    }
    proc = subprocess.Popen(
        [str(REPO / "deploy/image/run.sh"), image, "mcp-auth-sidecar", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", time.monotonic() + 30)
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
        req = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
        assert "resource_metadata=" in refused.value.headers["WWW-Authenticate"]
        req.add_header("Authorization", f"Bearer {unsigned()}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            assert b'"from":"backend"' in resp.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
