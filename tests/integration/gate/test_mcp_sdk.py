"""The real thing: an unmodified MCP SDK server behind the sidecar, driven by the MCP SDK client through it.

Both server flavours users run: stateful with SSE responses (sessions, ``Mcp-Session-Id``, a GET stream) and
stateless with JSON responses. The client runs the handshake-era protocol (``mode="legacy"``: initialize,
session id) and its default negotiation (``mode="auto"``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.integration.gate.helpers import PUBLIC, SidecarFactory, metrics_of, sample
from tests.support.jwt_tokens import expired, unsigned, valid
from tests.support.mcp_servers import running_mcp_server


@pytest.fixture(scope="module", params=["stateful-sse", "stateless-json"])
def mcp_upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    stateless = request.param == "stateless-json"
    with running_mcp_server(stateless=stateless, json_response=stateless) as url:
        yield url


@dataclass
class Exchange:
    method: str
    status: int
    request_body: bytes
    headers: dict[str, str]


@dataclass
class Recorder:
    """Every HTTP exchange the SDK client made, as the client saw it."""

    exchanges: list[Exchange] = field(default_factory=list)

    async def hook(self, response: httpx2.Response) -> None:
        request = response.request
        self.exchanges.append(
            Exchange(
                request.method,
                response.status_code,
                request.content,
                {k.lower(): v for k, v in response.headers.items()},
            )
        )

    def for_method(self, rpc_method: str) -> list[Exchange]:
        out = []
        for ex in self.exchanges:
            try:
                body = json.loads(ex.request_body) if ex.request_body else None
            except ValueError:
                continue
            if isinstance(body, dict) and body.get("method") == rpc_method:
                out.append(ex)
        return out


@asynccontextmanager
async def mcp_client(
    url: str, token: str, recorder: Recorder, mode: str = "legacy"
) -> AsyncIterator[tuple[Client, httpx2.AsyncClient]]:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, event_hooks={"response": [recorder.hook]}, timeout=30
    )
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
        yield client, http


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_initialize_list_and_call_with_a_valid_token(
    start_sidecar: SidecarFactory, mcp_upstream: str, mode: str
) -> None:
    sidecar = await start_sidecar(mcp_upstream)
    url = str(sidecar.make_url("/mcp"))
    recorder = Recorder()
    async with mcp_client(url, valid(), recorder, mode) as (client, _):
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} >= {"echo", "add"}
        result = await client.call_tool("add", {"a": 2, "b": 3})
        assert not result.is_error
        assert result.structured_content == {"result": 5}
        echoed = await client.call_tool("echo", {"text": "through the sidecar ✓"})
        assert echoed.content[0].text == "through the sidecar ✓"  # type: ignore[union-attr]
    assert recorder.exchanges, "the client talked to the sidecar"
    assert all(ex.status < 300 for ex in recorder.exchanges), [(e.method, e.status) for e in recorder.exchanges]
    if mode == "legacy":
        assert recorder.for_method("initialize")
    assert len(recorder.for_method("tools/list")) == 1
    assert len(recorder.for_method("tools/call")) == 2
    assert sample(metrics_of(sidecar), "mcp_sidecar_auth_rejections_total", reason="expired") == 0


async def test_stateful_session_id_passes_through(start_sidecar: SidecarFactory) -> None:
    with running_mcp_server(stateless=False, json_response=False) as upstream:
        sidecar = await start_sidecar(upstream)
        recorder = Recorder()
        async with mcp_client(str(sidecar.make_url("/mcp")), valid(), recorder) as (client, _):
            await client.list_tools()
        init = recorder.for_method("initialize")[0]
        session_id = init.headers["mcp-session-id"]
        assert session_id
        assert init.headers["content-type"].startswith("text/event-stream")
        assert recorder.for_method("tools/list")[0].headers["mcp-session-id"] == session_id
        assert any(ex.method == "DELETE" and ex.status == 200 for ex in recorder.exchanges)


async def test_expired_token_fails_with_401(start_sidecar: SidecarFactory, mcp_upstream: str) -> None:
    sidecar = await start_sidecar(mcp_upstream)
    recorder = Recorder()
    with pytest.raises(BaseException) as info:  # MCPError, wrapped by the transport's task group
        async with mcp_client(str(sidecar.make_url("/mcp")), expired(), recorder) as (client, _):
            await client.list_tools()
    assert info.errisinstance(MCPError) or info.group_contains(MCPError, depth=None), info.value
    assert recorder.exchanges
    for ex in recorder.exchanges:
        assert ex.status == 401
        assert ex.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_tools_list_itself_gets_401_when_the_token_expired(
    start_sidecar: SidecarFactory, mcp_upstream: str
) -> None:
    sidecar = await start_sidecar(mcp_upstream)
    recorder = Recorder()
    async with mcp_client(str(sidecar.make_url("/mcp")), valid(), recorder) as (client, http):
        assert (await client.list_tools()).tools
        http.headers["Authorization"] = f"Bearer {expired()}"
        with pytest.raises(MCPError):
            await client.list_tools()
        http.headers["Authorization"] = f"Bearer {valid()}"  # let the session end cleanly
    lists = recorder.for_method("tools/list")
    assert [ex.status for ex in lists] == [200, 401]
    challenge = lists[1].headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    assert 'error_description="the access token expired"' in challenge
    assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in challenge


async def test_raw_tools_list_in_a_live_session_with_an_expired_token_is_401(start_sidecar: SidecarFactory) -> None:
    with running_mcp_server(stateless=False, json_response=False) as upstream:
        sidecar = await start_sidecar(upstream)
        recorder = Recorder()
        async with mcp_client(str(sidecar.make_url("/mcp")), valid(), recorder) as (client, _):
            await client.list_tools()
            session_id = recorder.for_method("initialize")[0].headers["mcp-session-id"]
            protocol = client.protocol_version
            body = {"jsonrpc": "2.0", "id": 99, "method": "tools/list", "params": {}}
            headers = {
                "Mcp-Session-Id": session_id,
                "MCP-Protocol-Version": protocol,
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
            }
            resp = await sidecar.post(
                "/mcp", data=json.dumps(body), headers={**headers, "Authorization": f"Bearer {expired()}"}
            )
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
            assert (await resp.json())["error"] == "invalid_token"
            # The same request with a valid token in the same session works: only the token made the difference.
            resp = await sidecar.post(
                "/mcp", data=json.dumps(body), headers={**headers, "Authorization": f"Bearer {valid()}"}
            )
            assert resp.status == 200
            assert b'"tools"' in await resp.read()


async def test_token_expiring_mid_session_gets_401_on_the_next_request(
    start_sidecar: SidecarFactory, mcp_upstream: str
) -> None:
    sidecar = await start_sidecar(mcp_upstream, leeway_seconds=0)
    exp = math.ceil(time.time()) + 2
    token = unsigned({"exp": exp})
    recorder = Recorder()
    async with mcp_client(str(sidecar.make_url("/mcp")), token, recorder) as (client, http):
        assert (await client.list_tools()).tools
        while time.time() <= exp + 0.05:
            await asyncio.sleep(0.05)
        with pytest.raises(MCPError):
            await client.call_tool("add", {"a": 1, "b": 1})
        http.headers["Authorization"] = f"Bearer {valid()}"
    calls = recorder.for_method("tools/call")
    assert [ex.status for ex in calls] == [401]
    assert "expired" in calls[0].headers["www-authenticate"]


async def test_sdk_server_accepts_what_the_sidecar_forwards_for_a_browser_origin(
    start_sidecar: SidecarFactory, mcp_upstream: str
) -> None:
    # The SDK server bound to 127.0.0.1 answers 421/403 to a foreign Host or Origin; the sidecar rewrites both.
    sidecar = await start_sidecar(mcp_upstream)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "browser", "version": "1"},
        },
    }
    resp = await sidecar.post(
        "/mcp",
        data=json.dumps(body),
        headers={
            "Authorization": f"Bearer {valid()}",
            "Host": "mcp.example.com",
            "Origin": PUBLIC,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        },
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == PUBLIC
    assert b"serverInfo" in await resp.read()


async def test_sdk_errors_pass_through_unchanged(start_sidecar: SidecarFactory, mcp_upstream: str) -> None:
    sidecar = await start_sidecar(mcp_upstream)
    auth = {"Authorization": f"Bearer {valid()}"}
    # Not JSON at all: the SDK's own JSON-RPC parse error, status and body as the SDK sent them.
    resp = await sidecar.post(
        "/mcp",
        data=b"{not json",
        headers={**auth, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["jsonrpc"] == "2.0"
    assert body["error"]["code"] == -32700
    # A method the transport does not allow.
    resp = await sidecar.put("/mcp", headers=auth)
    assert resp.status == 405
