"""Red team: a JSON-RPC body with a number of more than 4300 digits. Python refuses to convert such a number
(CVE-2020-10735's limit) with a ValueError the body parser did not expect: a 500 with a traceback, with a tool
policy and with the audit trail alone. With a policy it is now a 400 (the body cannot be judged); with the audit
alone the body passes on to the backend, as any body the audit cannot read does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.mcp_message import MessageError, parse_body
from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import valid

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "Authorization": f"Bearer {valid(scope='mcp:read')}"}


def _body(digits: int, where: str) -> bytes:
    number = b"9" * digits
    if where == "id":
        return b'{"jsonrpc":"2.0","id":' + number + b',"method":"ping"}'
    return b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"n":' + number + b"}}}"


@settings(max_examples=30, deadline=None)
@given(digits=st.integers(4301, 20_000), where=st.sampled_from(["id", "arguments"]), negative=st.booleans())
def test_a_huge_number_is_a_message_error(digits: int, where: str, negative: bool) -> None:
    body = _body(digits, where)
    if negative:
        body = body.replace(b":9", b":-9", 1) if where == "id" else body.replace(b'"n":9', b'"n":-9')
    with pytest.raises(MessageError):
        parse_body(body)


@pytest.mark.parametrize("settings_", [{"tool_policy": [{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]},
                                       {"audit_log": "stdout"}], ids=["policy", "audit"])
@pytest.mark.parametrize("where", ["id", "arguments"])
async def test_never_a_500(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str], settings_: dict[str, Any], where: str
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, **settings_)
    resp = await sidecar.post("/mcp", data=_body(5000, where), headers=HEADERS)
    if "tool_policy" in settings_:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
        assert backend.seen == []
    else:
        assert resp.status == 200
        assert backend.last.body == _body(5000, where)
