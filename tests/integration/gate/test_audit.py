"""The audit trail through the real sidecar: one mcp.request line per request, the listed fields, never a
secret, and a full queue that drops (and counts) instead of blocking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit import AuditLog, arguments_hash
from sidecar.metrics import Metrics
from tests.integration.gate.helpers import SidecarFactory
from tests.integration.gate.test_mcp_sdk import Recorder, mcp_client
from tests.integration.gate.test_tool_policy import bearer, rpc, tool_call
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import expired, valid
from tests.support.mcp_servers import running_mcp_server

FIELDS = {
    "event", "ts", "sub", "client_id", "session_id", "protocol_version", "method", "tool", "jsonrpc_id", "decision",
    "reason", "status", "duration_ms", "request_bytes", "response_bytes", "remote",
}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_one_line_per_request_with_the_listed_fields_and_no_secrets(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], tmp_path: Path
) -> None:
    _, url = echo
    log = tmp_path / "audit.log"
    sidecar = await start_sidecar(
        url, audit_log=str(log), tool_policy=[{"tools": ["add"], "scopes": ["mcp:math"]}], audit_arguments="hash"
    )
    secret_arg = "hunter2-do-not-log"
    headers = {**bearer(azp="client-a", sub="alice"), "Mcp-Session-Id": "sess-1", "MCP-Protocol-Version": "2025-06-18",
               "Cookie": "session=cookie-secret"}
    token = headers["Authorization"].split()[1]
    body = tool_call("echo", 4, text=secret_arg)
    ok = await sidecar.post("/mcp", json=body, headers=headers)
    assert ok.status == 200
    denied = await sidecar.post("/mcp", json=tool_call("add", "r2", a=1, b=2), headers=headers)
    assert denied.status == 403
    stale = expired(sub="alice")
    unauth = await sidecar.post("/mcp", json=rpc("tools/list"), headers={"Authorization": f"Bearer {stale}"})
    assert unauth.status == 401
    await sidecar.close()  # flushes the writer
    events = lines(log)
    assert len(events) == 3
    first, second, third = events
    assert set(first) >= FIELDS
    assert first["event"] == "mcp.request" and first["ts"].endswith("Z")
    assert (first["sub"], first["client_id"], first["session_id"]) == ("alice", "client-a", "sess-1")
    assert (first["protocol_version"], first["method"], first["tool"], first["jsonrpc_id"]) == (
        "2025-06-18", "tools/call", "echo", 4)
    assert (first["decision"], first["status"]) == ("allow", 200)
    assert first["request_bytes"] == len(json.dumps(body).encode())
    assert first["response_bytes"] == int(ok.headers["Content-Length"])
    assert first["remote"] == "127.0.0.1" and first["duration_ms"] >= 0
    assert first["arguments_sha256"] == arguments_hash({"text": secret_arg})
    assert (second["decision"], second["reason"], second["status"], second["jsonrpc_id"]) == (
        "deny", "insufficient_scope", 403, "r2")
    assert (third["decision"], third["status"], third["sub"]) == ("deny", 401, None)
    text = log.read_text()
    for secret in (secret_arg, token, "cookie-secret", stale, token.split(".")[1], token.split(".")[2]):
        assert secret not in text


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    metrics = Metrics()
    audit = AuditLog("stdout", metrics, capacity=2)  # never opened: nothing drains the queue
    for _ in range(5):
        audit.emit("mcp.request", {"sub": "x"})
    assert metrics.registry.get_sample_value("mcp_sidecar_audit_dropped_total") == 3


def test_fields_outside_the_schema_are_never_written(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    audit = AuditLog(str(log), Metrics())
    audit.open()
    audit.emit("oauth.token", {"sub": "s", "access_token": "secret-at", "code": "secret-code", "grant_type": "x"})
    audit.close()
    (event,) = lines(log)
    assert event["grant_type"] == "x" and "secret" not in log.read_text()


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful-sse", "stateless-json"])
async def test_sdk_client_through_allow_all_policy_and_audit_to_stdout(
    start_sidecar: SidecarFactory, stateless: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    with running_mcp_server(stateless=stateless, json_response=stateless) as upstream:
        sidecar = await start_sidecar(upstream, tool_policy=[{"tools": ["*"]}], audit_log="stdout")
        recorder = Recorder()
        async with mcp_client(str(sidecar.make_url("/mcp")), valid(sub="bob"), recorder) as (client, _):
            assert {t.name for t in (await client.list_tools()).tools} >= {"echo", "add"}
            assert (await client.call_tool("add", {"a": 2, "b": 3})).structured_content == {"result": 5}
        await sidecar.close()
    out = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith('{"event"')]
    assert len(out) == len(recorder.exchanges)
    assert all(e["sub"] == "bob" and e["decision"] == "allow" for e in out)
    calls = [e for e in out if e["method"] == "tools/call"]
    assert len(calls) == 1 and calls[0]["tool"] == "add" and calls[0]["status"] == 200, out
    assert all(e["response_bytes"] > 0 for e in calls)


def test_client_values_are_cut_so_one_request_cannot_flood_the_trail(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    audit = AuditLog(str(log), Metrics())
    audit.open()
    audit.emit("mcp.request", {"tool": "x" * 100_000, "jsonrpc_id": ["i" * 1000] * 5000, "sub": "s"})
    audit.close()
    (event,) = lines(log)
    assert len(event["tool"]) <= 257 and event["tool"].startswith("xxx")
    assert len(event["jsonrpc_id"]) == 100 and all(len(i) <= 257 for i in event["jsonrpc_id"])
    assert len(log.read_bytes()) < 64 * 1024
