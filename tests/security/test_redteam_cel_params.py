"""Red team: a tool call whose arguments make a CEL condition expensive. A rule whose ``when`` reads
``mcp.params`` converts the whole params object into CEL values on the event loop, about 10 µs per value: an
8 MB body of a flat object (over a million members) held the worker for seconds, for every client. The params
a condition may see are bounded (``MAX_CEL_PARAM_VALUES``); a call beyond that is denied (the policy fails
closed), and the CEL program never runs."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.policy import MAX_CEL_PARAM_VALUES, Call, Caller, Outcome, compile_policy
from tests.integration.gate.helpers import SidecarFactory
from tests.support.backends import EchoBackend
from tests.support.jwt_tokens import valid

RULES: list[dict[str, Any]] = [{"tools": ["query_*"], "when": 'mcp.params.arguments.db != "prod"'}]
CALLER = Caller({"sub": "u"}, frozenset())


def _policy() -> Any:
    policy, problems = compile_policy(RULES, "allow")
    assert problems == [] and policy is not None
    return policy


def _call(arguments: dict[str, Any]) -> Call:
    return Call("tools/call", "query_x", {"name": "query_x", "arguments": arguments})


def test_a_huge_params_object_is_denied_without_running_the_condition() -> None:
    policy = _policy()
    wide = {"db": "dev", **{f"k{i}": i for i in range(MAX_CEL_PARAM_VALUES + 1)}}
    decision = policy.decide(CALLER, _call(wide))
    assert decision.outcome is Outcome.ACCESS_DENIED
    assert decision.reason == "params_too_large"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 50), nested=st.booleans())
def test_params_under_the_bound_are_judged_by_the_condition(n: int, nested: bool) -> None:
    policy = _policy()
    filler: Any = list(range(n)) if not nested else {"a": [{"b": i} for i in range(n)]}
    assert policy.decide(CALLER, _call({"db": "dev", "x": filler})).allowed
    assert policy.decide(CALLER, _call({"db": "prod", "x": filler})).outcome is Outcome.ACCESS_DENIED


async def test_through_the_sidecar_a_huge_call_is_403_and_never_reaches_the_backend(
    start_sidecar: SidecarFactory, echo: tuple[EchoBackend, str]
) -> None:
    backend, url = echo
    sidecar = await start_sidecar(url, tool_policy=RULES)
    arguments = {"db": "dev", "rows": list(range(MAX_CEL_PARAM_VALUES * 2))}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "query_x", "arguments": arguments}}).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "Authorization": f"Bearer {valid()}"}
    resp = await sidecar.post("/mcp", data=body, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"] == "access_denied"
    assert backend.seen == []
