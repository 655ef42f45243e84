"""Attempts to get a denied tool call past tool_policy. Each must be refused by the sidecar (4xx) with nothing
reaching the MCP server: the body is the truth, and anything two parsers could read differently is refused."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import valid

POLICY = [{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "Authorization": f"Bearer {valid(scope='mcp:read')}"}
DENIED = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}'

ATTACKS: dict[str, tuple[bytes, dict[str, str]]] = {
    "plain": (DENIED, {}),
    "header claims another tool": (DENIED, {"Mcp-Method": "tools/call", "Mcp-Name": "echo"}),
    "header claims another method": (DENIED, {"Mcp-Method": "tools/list"}),
    "two Mcp-Name headers": (DENIED, {}),  # filled in below with a repeated header
    "duplicate name key, allowed one last": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","name":"echo"}}', {}),
    "duplicate params": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"params":{"name":"delete_all"}}', {}),
    "duplicate method": (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_all"}}', {}),
    "hidden in a batch": (b"[" + b'{"jsonrpc":"2.0","id":0,"method":"ping"},' + DENIED + b"]", {}),
    "utf-8 BOM": (b"\xef\xbb\xbf" + DENIED, {}),
    "escaped name": (DENIED.replace(b"delete_all", b"delete\\u005fall"), {}),
    "gzip body": (gzip.compress(DENIED), {"Content-Encoding": "gzip"}),
    "invalid utf-8": (DENIED.replace(b"delete_all", b"delete_all\xff"), {}),
    "NaN id": (DENIED.replace(b'"id":1', b'"id":NaN'), {}),
    "trailing garbage": (DENIED + b"}", {}),
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_bypass_attempts_are_refused(
    name: str, start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    body, extra = ATTACKS[name]
    headers: Any = {**HEADERS, **extra}
    if name == "two Mcp-Name headers":
        headers = [*HEADERS.items(), ("Mcp-Name", "delete_all"), ("Mcp-Name", "echo")]
    resp = await sidecar.post("/mcp", data=body, headers=headers)
    assert 400 <= resp.status < 500, (name, resp.status)
    assert (await resp.json())["error"] in ("invalid_request", "insufficient_scope")
    assert backend.seen == []


async def test_chunked_body_is_judged_too(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)

    async def chunks() -> Any:
        for i in range(0, len(DENIED), 7):
            yield DENIED[i : i + 7]

    resp = await sidecar.post("/mcp", data=chunks(), headers=HEADERS)
    assert resp.status == 403
    assert backend.seen == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=json_values, rid=st.integers() | st.text(max_size=5), batch_noise=st.lists(
    st.sampled_from(["ping", "tools/list", "notifications/initialized"]), max_size=3), position=st.integers(0, 3))
async def test_a_denied_call_never_reaches_the_backend_in_any_batch(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str],
    arguments: Any, rid: Any, batch_noise: list[str], position: int,
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    params = {"name": "delete_x", "arguments": arguments}
    denied = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    noise = [{"jsonrpc": "2.0", "id": i, "method": m} for i, m in enumerate(batch_noise)]
    noise.insert(min(position, len(noise)), denied)
    body = json.dumps(noise if batch_noise else denied).encode()
    before = len(backend.seen)
    resp = await sidecar.post("/mcp", data=body, headers=HEADERS)
    assert resp.status == 403
    assert len(backend.seen) == before


@pytest.mark.parametrize("method", ["PUT", "PATCH", "GET"])
async def test_a_body_under_another_http_method_is_judged_too(
    method: str, start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    resp = await sidecar.request(method, "/mcp", data=DENIED, headers=HEADERS)
    assert resp.status == 403
    assert backend.seen == []
