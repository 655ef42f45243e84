"""tool_policy through the real sidecar: step-up challenges, claim denials, headers vs body, batches, filtering
of tools/list (JSON and SSE), against an echo backend and the official MCP SDK server and client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.gate.helpers import PUBLIC, SidecarFactory, metrics_of, sample
from tests.integration.gate.test_mcp_sdk import Recorder, mcp_client
from tests.support.backends import EchoBackend, SseBackend, fixed, serve
from tests.support.jwt_tokens import valid
from tests.support.mcp_servers import running_mcp_server

POLICY: list[dict[str, Any]] = [
    {"tools": ["add", "delete_*"], "scopes": ["mcp:math"]},
    {"methods": ["resources/read"], "scopes": ["mcp:resources"]},
    {"tools": ["*"], "claims": {"email_verified": True}},
    {"tools": ["query_*"], "when": 'jwt.groups.exists(g, g == "analysts") && mcp.params.arguments.db != "prod"'},
]
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def rpc(method: str, rid: Any = 1, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}


def tool_call(name: str, rid: Any = 1, **arguments: Any) -> dict[str, Any]:
    return rpc("tools/call", rid, name=name, arguments=arguments)


def bearer(scope: str = "", **claims: Any) -> dict[str, str]:
    return {**JSON_HEADERS, "Authorization": f"Bearer {valid(scope=scope, **{'email_verified': True, **claims})}"}


async def test_missing_scope_is_a_step_up_challenge_and_nothing_reaches_the_backend(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    resp = await sidecar.post("/mcp", json=tool_call("add", a=1, b=2), headers=bearer("mcp:read"))
    assert resp.status == 403
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope"')
    assert 'scope="mcp:math"' in challenge
    assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert (await resp.json())["error"] == "insufficient_scope"
    assert backend.seen == []
    ok = await sidecar.post("/mcp", json=tool_call("add", a=1, b=2), headers=bearer("mcp:read mcp:math"))
    assert ok.status == 200
    assert len(backend.seen) == 1
    assert json.loads(backend.last.body) == tool_call("add", a=1, b=2)  # forwarded byte for byte
    m = metrics_of(sidecar)
    assert sample(m, "mcp_sidecar_tool_calls_total", tool="add", decision="insufficient_scope") == 1
    assert sample(m, "mcp_sidecar_tool_calls_total", tool="add", decision="allow") == 1


async def test_claim_and_condition_rules_answer_access_denied(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    resp = await sidecar.post("/mcp", json=tool_call("echo", text="x"), headers=bearer(email_verified=False))
    assert resp.status == 403
    assert "WWW-Authenticate" not in resp.headers
    assert (await resp.json())["error"] == "access_denied"
    analyst = bearer(groups=["analysts"])
    assert (await sidecar.post("/mcp", json=tool_call("query_x", db="prod"), headers=analyst)).status == 403
    assert (await sidecar.post("/mcp", json=tool_call("query_x", db="dev"), headers=analyst)).status == 200
    assert (await sidecar.post("/mcp", json=tool_call("query_x", db="dev"), headers=bearer())).status == 403
    assert len(backend.seen) == 1
    m = metrics_of(sidecar)
    assert sample(m, "mcp_sidecar_tool_calls_total", tool="query_x", decision="access_denied") == 2
    assert sample(m, "mcp_sidecar_auth_rejections_total", reason="access_denied") == 3


async def test_method_rules_batches_and_header_mismatch(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    read = rpc("resources/read", uri="file:///etc/x")
    assert (await sidecar.post("/mcp", json=read, headers=bearer())).status == 403
    # A batch is judged element by element: one denied element denies the whole request.
    batch = [rpc("tools/list", 1), tool_call("echo", 2, text="hi"), tool_call("delete_all", 3)]
    resp = await sidecar.post("/mcp", json=batch, headers=bearer())
    assert resp.status == 403 and 'scope="mcp:math"' in resp.headers["WWW-Authenticate"]
    # The 2026-07-28 headers must say what the body says: a header alone is never trusted.
    lying = {**bearer("mcp:math"), "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    resp = await sidecar.post("/mcp", json=tool_call("delete_all"), headers=lying)
    assert resp.status == 400
    assert "Mcp-Name" in (await resp.json())["error_description"]
    assert backend.seen == []
    honest = {**bearer(), "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    assert (await sidecar.post("/mcp", json=tool_call("echo", text="x"), headers=honest)).status == 200
    # Unparseable or ambiguous bodies are 400 once a policy could apply.
    dup = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"delete_all"}}'
    assert (await sidecar.post("/mcp", data=dup, headers=bearer())).status == 400
    assert (await sidecar.post("/mcp", data=b"not json", headers=bearer())).status == 400
    assert len(backend.seen) == 1
    # GET (the server's stream) and DELETE carry no call and pass.
    assert (await sidecar.get("/mcp", headers=bearer())).status == 200


async def test_default_deny_with_an_explicit_allow_list(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(
        url, tool_policy=[{"tools": ["echo"]}, {"methods": ["initialize", "notifications/*", "tools/list"]}],
        tool_policy_default="deny",
    )
    assert (await sidecar.post("/mcp", json=tool_call("echo", text="x"), headers=bearer())).status == 200
    assert (await sidecar.post("/mcp", json=rpc("tools/list"), headers=bearer())).status == 200
    resp = await sidecar.post("/mcp", json=tool_call("add"), headers=bearer())
    assert resp.status == 403 and (await resp.json())["error"] == "access_denied"
    assert (await sidecar.post("/mcp", json=rpc("prompts/list"), headers=bearer())).status == 403
    assert len(backend.seen) == 2


TOOLS_RESULT = {"tools": [{"name": "echo"}, {"name": "add"}, {"name": "delete_all"}, {"name": "query_x"}]}


async def test_hide_denied_tools_on_json(start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]) -> None:
    backend, url = echo
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": TOOLS_RESULT}).encode()
    backend.reply = fixed(200, answer, content_type="application/json")
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", json=rpc("tools/list", 5), headers=bearer())
    names = [t["name"] for t in (await resp.json())["result"]["tools"]]
    assert names == ["echo", "query_x"]  # query_x's rule reads mcp.params: decided at call time only
    assert int(resp.headers["Content-Length"]) == len(await resp.read())
    full = await sidecar.post("/mcp", json=rpc("tools/list", 5), headers=bearer("mcp:math"))
    assert await full.read() == answer  # nothing hidden: byte-identical
    other = await sidecar.post("/mcp", json=tool_call("echo", 5, text="x"), headers=bearer())
    assert await other.read() == answer  # not a tools/list request: never rewritten


async def test_hide_denied_tools_on_sse_event_by_event(start_sidecar: SidecarFactory) -> None:
    note = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n'
    answer = b"event: message\nid: 7\ndata: " + json.dumps({"jsonrpc": "2.0", "id": 5, "result": TOOLS_RESULT}).encode()
    backend = SseBackend([(0, note), (0, answer[:30]), (0.05, answer[30:] + b"\n\n"), (0, b": bye\n\n")])
    server = await serve(backend.app())
    try:
        sidecar = await start_sidecar(str(server.make_url("")).rstrip("/"), tool_policy=POLICY, hide_denied_tools=True)
        resp = await sidecar.post("/mcp", json=rpc("tools/list", 5), headers=bearer())
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == note  # delivered before the tools/list answer was complete
        rest = await resp.read()
    finally:
        await server.close()
    event, tail = rest.split(b"\n\n", 1)
    assert tail == b": bye\n\n"
    lines = event.split(b"\n")
    assert lines[:2] == [b"event: message", b"id: 7"]
    assert [t["name"] for t in json.loads(lines[2][len(b"data: "):])["result"]["tools"]] == ["echo", "query_x"]


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful-sse", "stateless-json"])
async def test_official_sdk_client_and_server(start_sidecar: SidecarFactory, stateless: bool) -> None:
    with running_mcp_server(stateless=stateless, json_response=stateless) as upstream:
        sidecar = await start_sidecar(upstream, tool_policy=POLICY, hide_denied_tools=True)
        url = str(sidecar.make_url("/mcp"))
        token = valid(email_verified=True, scope="mcp:read")
        recorder = Recorder()
        async with mcp_client(url, token, recorder) as (client, _):
            assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
            assert (await client.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
            with pytest.raises(MCPError):
                await client.call_tool("add", {"a": 1, "b": 2})
        denied = recorder.for_method("tools/call")[-1]
        assert denied.status == 403
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        recorder = Recorder()
        async with mcp_client(url, valid(email_verified=True, scope="mcp:math"), recorder) as (client, _):
            assert {t.name for t in (await client.list_tools()).tools} == {"echo", "add"}
            assert (await client.call_tool("add", {"a": 1, "b": 2})).structured_content == {"result": 3}
