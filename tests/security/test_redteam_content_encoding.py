"""Red team: a compressed request body. aiohttp's server decompresses request bodies by default, so the relay
forwarded the *decompressed* bytes under the client's ``Content-Encoding: gzip`` (the body no longer matched its
headers, a small gzip bomb became a large upload to the MCP server), and a body that did not decompress was a
500 with a traceback in the log. The relay forwards request bodies byte for byte, compressed or not; with a
tool policy a compressed body is refused (400), under any spelling of the header."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.server import RUNNER_OPTIONS
from tests.integration.gate.helpers import RUNNER, SidecarFactory
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import valid

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "Authorization": f"Bearer {valid(scope='mcp:read')}"}
LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
POLICY = [{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]
DENIED = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_all","arguments":{}}}'


def test_the_tests_serve_the_way_production_does() -> None:
    assert RUNNER == RUNNER_OPTIONS
    assert RUNNER_OPTIONS["auto_decompress"] is False


@pytest.mark.parametrize("encoding,compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_reaches_the_backend_byte_for_byte(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], encoding: str, compress: Any
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url)
    bomb = compress(b" " * 2_000_000 + LIST)  # ~2 KB on the wire, 2 MB once inflated
    resp = await sidecar.post("/mcp", data=bomb, headers={**HEADERS, "Content-Encoding": encoding})
    assert resp.status == 200
    assert backend.last.body == bomb
    assert backend.last.get("Content-Encoding") == encoding


async def test_a_body_that_does_not_decompress_is_not_a_500(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url)
    resp = await sidecar.post("/mcp", data=LIST, headers={**HEADERS, "Content-Encoding": "gzip"})
    assert resp.status == 200  # the backend decides what to make of it
    assert backend.last.body == LIST


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.sampled_from(["identity", "IDENTITY", " identity", "gzip", "deflate", "br", "x"]),
    second=st.sampled_from(["gzip", "deflate", "identity, gzip", "br", "zstd"]),
    compressed=st.booleans(),
)
async def test_with_a_policy_any_compressed_body_is_refused_never_a_500(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], first: str, second: str, compressed: bool
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=POLICY)
    body = gzip.compress(DENIED) if compressed else DENIED
    headers = [*HEADERS.items(), ("Content-Encoding", first), ("Content-Encoding", second)]
    before = len(backend.seen)
    resp = await sidecar.post("/mcp", data=body, headers=headers)
    assert 400 <= resp.status < 500, resp.status
    assert (await resp.json())["error"] in ("invalid_request", "insufficient_scope")
    assert len(backend.seen) == before
