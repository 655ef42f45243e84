"""Red team: getting around ``hide_denied_tools``, or using it to make the sidecar hold a whole response.

* a huge JSON ``tools/list`` answer was read whole into memory with no cap (backend -> memory);
* a client asking for ``Accept-Encoding: gzip`` (httpx, the MCP Python SDK's client, does by default) got a
  compressed answer the filter could not read, so the denied tools reached it unfiltered;
* a ``Text/Event-Stream`` answer (media types are case-insensitive, RFC 9110 §8.3.1) was not recognised as SSE
  and read whole, so the client saw nothing of a stream held open;
* a deeply nested answer made the filter's JSON parser raise ``RecursionError`` (a 500).
"""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.tool_filter import MAX_FILTERED_BODY_BYTES
from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend, Seen, serve
from tests.support.jwt_tokens import valid

POLICY = [{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "Authorization": f"Bearer {valid(scope='mcp:read')}"}
LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
TOOLS = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "echo"}, {"name": "delete_all"}]}}


async def test_a_huge_tools_list_answer_is_not_read_whole(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    pad = "x" * (MAX_FILTERED_BODY_BYTES + 1024)
    huge = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "echo", "description": pad},
                                                            {"name": "delete_all"}]}}

    async def reply(request: web.Request, _: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()  # no length: the sidecar cannot refuse it from the head alone
        await resp.prepare(request)
        data = json.dumps(huge).encode()
        for i in range(0, len(data), 1 << 20):
            await resp.write(data[i : i + (1 << 20)])
        await resp.write_eof()
        return resp

    backend.reply = reply
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", data=LIST, headers=HEADERS)
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"


async def test_a_tools_list_answer_under_the_cap_is_still_filtered(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    pad = "x" * (MAX_FILTERED_BODY_BYTES // 2)
    big = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "echo", "description": pad},
                                                           {"name": "delete_all"}]}}

    async def reply(_: web.Request, __: Seen) -> web.StreamResponse:
        return web.json_response(big)

    backend.reply = reply
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", data=LIST, headers=HEADERS)
    assert resp.status == 200
    assert [t["name"] for t in (await resp.json())["result"]["tools"]] == ["echo"]


async def test_accept_encoding_gzip_does_not_reveal_denied_tools(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo

    async def reply(request: web.Request, _: Seen) -> web.StreamResponse:
        body = json.dumps(TOOLS).encode()
        headers = {"Content-Type": "application/json"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):  # a server with compression middleware
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    backend.reply = reply
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", data=LIST, headers={**HEADERS, "Accept-Encoding": "gzip, deflate"})
    assert resp.status == 200
    assert [t["name"] for t in (await resp.json())["result"]["tools"]] == ["echo"]
    other = await sidecar.post("/mcp", data=b'{"jsonrpc":"2.0","id":2,"method":"ping"}',
                               headers={**HEADERS, "Accept-Encoding": "gzip"})
    assert other.status == 200
    assert backend.last.get("Accept-Encoding") == "gzip"  # untouched when nothing is filtered


async def test_a_compressed_answer_the_filter_cannot_read_is_refused(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo

    async def reply(_: web.Request, __: Seen) -> web.StreamResponse:  # compresses whatever was asked
        return web.Response(body=gzip.compress(json.dumps(TOOLS).encode()),
                            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    backend.reply = reply
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", data=LIST, headers=HEADERS)
    assert resp.status == 502
    assert b"delete_all" not in await resp.read()


async def test_sse_media_type_is_case_insensitive(start_sidecar: SidecarFactory) -> None:
    answer = b"event: message\ndata: " + json.dumps(TOOLS).encode() + b"\n\n"
    gone = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "Text/Event-Stream"})
        await resp.prepare(request)
        await resp.write(answer)
        try:
            while True:  # the stream stays open, as a server's SSE stream does
                await asyncio.sleep(0.05)
                await resp.write(b": keep-alive\n\n")
        except (asyncio.CancelledError, ConnectionError):
            gone.set()
            raise

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await serve(app)
    try:
        sidecar = await start_sidecar(str(server.make_url("")).rstrip("/"), tool_policy=POLICY,
                                      hide_denied_tools=True)
        resp = await sidecar.post("/mcp", data=LIST, headers=HEADERS)
        event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        data = json.loads(event.split(b"data: ", 1)[1])
        assert [t["name"] for t in data["result"]["tools"]] == ["echo"]
        resp.close()
    finally:
        await server.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=1, max_value=200_000), opener=st.sampled_from(["[", '{"a":']))
async def test_a_deeply_nested_answer_is_relayed_not_a_500(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], depth: int, opener: str
) -> None:
    backend, url = echo
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    body = ('{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"delete_all"}],"x":' + nested + "}}").encode()

    async def reply(_: web.Request, __: Seen) -> web.StreamResponse:
        return web.Response(body=body, headers={"Content-Type": "application/json"})

    backend.reply = reply
    sidecar = await start_sidecar(url, tool_policy=POLICY, hide_denied_tools=True)
    resp = await sidecar.post("/mcp", data=LIST, headers=HEADERS)
    assert resp.status in (200, 502), resp.status
    if resp.status == 200:
        assert b"delete_all" not in await resp.read()  # filtered, or refused: never passed on unfiltered


async def test_a_resumed_stream_does_not_replay_denied_tools(start_sidecar: SidecarFactory) -> None:
    """POST tools/list, drop the connection, then GET with Last-Event-ID: the server replays the stream's events
    (MCP "Resumability and Redelivery"), tools/list answer included, on a request that named no tools/list."""
    replay = b"id: s1-2\nevent: message\ndata: " + json.dumps({**TOOLS, "id": 7}).encode() + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if request.headers.get("Last-Event-ID") == "s1-1":
            await resp.write(replay)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    server = await serve(app)
    try:
        sidecar = await start_sidecar(str(server.make_url("")).rstrip("/"), tool_policy=POLICY,
                                      hide_denied_tools=True)
        headers = {"Accept": "text/event-stream", "Authorization": HEADERS["Authorization"],
                   "Mcp-Session-Id": "s1", "Last-Event-ID": "s1-1"}
        resp = await sidecar.get("/mcp", headers=headers)
        body = await resp.read()
    finally:
        await server.close()
    assert resp.status == 200
    data = json.loads(body.split(b"data: ", 1)[1].split(b"\n", 1)[0])
    assert [t["name"] for t in data["result"]["tools"]] == ["echo"]
    assert body.startswith(b"id: s1-2\n")  # the event id stays, so the client can resume again
