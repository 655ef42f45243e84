"""tool_policy: every rule shape, the outcome a client sees, and what check-config says about bad rules."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, load_settings
from sidecar.guard import ToolLabels
from sidecar.policy import Call, Caller, Outcome, Policy, claim_matches, compile_policy

ISSUE_EXAMPLE: list[dict[str, Any]] = [
    {"tools": ["delete_*", "admin.*"], "scopes": ["mcp:admin"]},
    {"methods": ["resources/read"], "scopes": ["mcp:resources"]},
    {"tools": ["*"], "claims": {"email_verified": True}},
    {
        "tools": ["query_*"],
        "when": 'jwt.groups.exists(g, g == "analysts") && mcp.params.arguments.database != "prod"',
    },
]


def build(rules: list[dict[str, Any]], default: str = "allow") -> Policy:
    policy, problems = compile_policy(rules, default)
    assert problems == []
    assert policy is not None
    return policy


def caller(scopes: str = "", **claims: Any) -> Caller:
    return Caller({"sub": "u1", **claims}, frozenset(scopes.split()))


def call(tool: str, **arguments: Any) -> Call:
    return Call("tools/call", tool, {"name": tool, "arguments": arguments})


POLICY = build(ISSUE_EXAMPLE)
VERIFIED = {"email_verified": True}


def test_scope_rule_gives_a_step_up_decision_naming_the_scope() -> None:
    decision = POLICY.decide(caller("mcp:read", **VERIFIED), call("delete_user"))
    assert decision.outcome is Outcome.INSUFFICIENT_SCOPE
    assert decision.scopes == ("mcp:admin",)
    assert POLICY.decide(caller("mcp:admin", **VERIFIED), call("delete_user")).allowed
    assert POLICY.decide(caller("", **VERIFIED), call("admin.reset")).outcome is Outcome.INSUFFICIENT_SCOPE
    # "admin.*" is a glob, not a regex: "adminXreset" is another tool.
    assert POLICY.decide(caller("", **VERIFIED), call("adminXreset")).allowed


def test_method_rule_applies_to_any_json_rpc_method() -> None:
    read = Call("resources/read", None, {"uri": "file:///a"})
    assert POLICY.decide(caller(""), read).outcome is Outcome.INSUFFICIENT_SCOPE
    assert POLICY.decide(caller("mcp:resources"), read).allowed
    assert POLICY.decide(caller(""), Call("tools/list", None, {})).allowed  # no rule selects it: default


def test_claim_rule_denies_without_step_up() -> None:
    decision = POLICY.decide(caller("mcp:admin"), call("delete_user"))
    assert decision.outcome is Outcome.ACCESS_DENIED  # scopes would not help: no step-up
    assert POLICY.decide(caller("mcp:admin", email_verified=False), call("echo")).outcome is Outcome.ACCESS_DENIED
    assert POLICY.decide(caller("", email_verified="true"), call("echo")).outcome is Outcome.ACCESS_DENIED


def test_cel_condition_reads_claims_and_arguments() -> None:
    analyst = caller("", groups=["eng", "analysts"], **VERIFIED)
    assert POLICY.decide(analyst, call("query_sales", database="dev")).allowed
    assert POLICY.decide(analyst, call("query_sales", database="prod")).outcome is Outcome.ACCESS_DENIED
    outsider = caller("", groups=["eng"], **VERIFIED)
    assert POLICY.decide(outsider, call("query_sales", database="dev")).outcome is Outcome.ACCESS_DENIED
    # A missing claim or argument is a CEL error: the rule fails closed.
    assert POLICY.decide(caller("", **VERIFIED), call("query_sales", database="dev")).outcome is Outcome.ACCESS_DENIED
    assert POLICY.decide(analyst, call("query_sales")).outcome is Outcome.ACCESS_DENIED


def test_cel_sees_method_tool_name_and_broker_scope() -> None:
    policy = build([{"methods": ["*"], "when": 'mcp.method == "tools/call" && mcp.tool.name == "echo" '
                     '&& jwt.scope.matches("(^| )mcp:x( |$)")'}])
    assert policy.decide(Caller({"scope": "openid mcp:x"}, frozenset()), call("echo")).allowed
    assert not policy.decide(Caller({"scope": "openid"}, frozenset()), call("echo")).allowed
    assert not policy.decide(Caller({"scope": "mcp:x"}, frozenset()), call("add")).allowed


def test_non_boolean_condition_denies() -> None:
    policy = build([{"tools": ["*"], "when": "jwt.sub"}])
    assert not policy.decide(caller(""), call("echo")).allowed


def test_default_deny_and_explicit_allow_rules() -> None:
    policy = build([{"tools": ["read_*"]}], default="deny")
    assert policy.decide(caller(""), call("read_file")).allowed
    denied = policy.decide(caller(""), call("write_file"))
    assert denied.outcome is Outcome.ACCESS_DENIED
    assert denied.reason == "default_deny"


def test_every_matching_rule_must_hold_and_scopes_are_unioned() -> None:
    policy = build([{"tools": ["*"], "scopes": ["a"]}, {"tools": ["x*"], "scopes": ["b"]}])
    decision = policy.decide(caller("a"), call("xy"))
    assert decision.outcome is Outcome.INSUFFICIENT_SCOPE
    assert decision.scopes == ("a", "b")


def test_tools_list_view_never_hides_by_a_rule_that_reads_params() -> None:
    # The issue's query_* rule reads mcp.params: it decides at call time only, so it never hides.
    assert POLICY.visible(caller("", groups=["analysts"], **VERIFIED), "query_sales")
    assert POLICY.visible(caller("", groups=["eng"], **VERIFIED), "query_sales")
    groups_only = build([{"tools": ["query_*"], "when": 'jwt.groups.exists(g, g == "analysts")'}])
    assert groups_only.visible(caller("", groups=["analysts"]), "query_sales")
    assert not groups_only.visible(caller("", groups=["eng"]), "query_sales")
    assert not groups_only.visible(caller(""), "query_sales")  # a missing claim fails closed
    assert not POLICY.visible(caller("", **VERIFIED), "delete_user")  # missing scope hides
    assert POLICY.visible(caller("mcp:admin", **VERIFIED), "delete_user")
    only_params = build([{"tools": ["*"], "when": 'mcp.params.arguments.x == "params"'}])
    assert only_params.visible(caller(""), "anything")


def test_no_rules_and_default_allow_means_no_policy_at_all() -> None:
    assert compile_policy([], "allow") == (None, [])
    policy, _ = compile_policy([], "deny")
    assert policy is not None and not policy.decide(caller(""), call("x")).allowed


def test_list_claims_contain_and_dotted_paths() -> None:
    claims = {"roles": ["a", "b"], "realm_access": {"roles": ["admin"]}, "n": 1, "flag": True}
    assert claim_matches(claims, "roles", "b")
    assert not claim_matches(claims, "roles", "c")
    assert claim_matches(claims, "realm_access.roles", "admin")
    assert claim_matches(claims, "n", 1) and not claim_matches(claims, "n", True)
    assert claim_matches(claims, "flag", True) and not claim_matches(claims, "flag", 1)
    assert not claim_matches(claims, "missing", "x")


def test_compile_reports_every_problem_at_once() -> None:
    _, problems = compile_policy(
        [
            {"tools": ["ok"], "scope": ["typo"]},
            {"scopes": ["x"]},
            {"tools": ["[abc"]},
            {"tools": []},
            {"tools": ["x"], "when": "jwt.groups.exists(g, "},
            {"tools": ["x"], "when": "user.admin == true"},
            {"tools": ["x"], "when": 'jwt.sub.split("@") == ""'},
            {"tools": ["x"], "claims": {"roles": ["a", "b"]}},
            "not a mapping",
        ]
    )
    text = "\n".join(problems)
    assert "rule 1: unknown key 'scope'" in text
    assert "rule 2: empty selector" in text
    assert "rule 3: bad glob" in text and "'['" in text
    assert "rule 4: 'tools' must be a non-empty list" in text
    assert "rule 5: the CEL expression does not parse" in text
    assert "rule 6: unknown variable(s) user" in text
    assert "rule 7: unknown function(s) split" in text
    assert "rule 8: claim 'roles'" in text
    assert "rule 9: must be a mapping" in text


def test_check_config_names_the_key_and_every_rule(tmp_path: Any) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:9\npublic_url: https://m.example\n"
        "tool_policy:\n  - tools: ['[x']\n  - methods: ['*']\n    when: 'jwt.a &&'\n"
        "tool_policy_default: maybe\naudit_log: /nonexistent-dir/audit.log\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(str(path), {}, {})
    rendered = [p.render() for p in info.value.problems]
    assert any(r.startswith("tool_policy") and "rule 1: bad glob" in r for r in rendered)
    assert any(r.startswith("tool_policy") and "rule 2: the CEL expression does not parse" in r for r in rendered)
    assert any(r.startswith("tool_policy_default") for r in rendered)
    assert any(r.startswith("audit_log") and "does not exist" in r for r in rendered)


def test_policy_from_the_environment_as_json() -> None:
    env = {"MCP_SIDECAR_TOOL_POLICY": '[{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]',
           "MCP_SIDECAR_TOOL_POLICY_DEFAULT": "deny", "MCP_SIDECAR_HIDE_DENIED_TOOLS": "true"}
    s = load_settings(None, env, {"upstream": "http://127.0.0.1:9", "public_url": "https://m.example"})
    assert s.tool_policy == [{"tools": ["delete_*"], "scopes": ["mcp:admin"]}]
    assert s.tool_policy_default == "deny" and s.hide_denied_tools


def test_tool_labels_are_bounded() -> None:
    labels = ToolLabels(limit=3)
    assert [labels(f"t{i}") for i in range(5)] == ["t0", "t1", "t2", "other", "other"]
    assert labels("t1") == "t1"
    assert ToolLabels()("x" * 500) == "other"


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(tool=names, scopes=st.sets(st.sampled_from(["mcp:admin", "mcp:resources", "x"])), verified=st.booleans())
def test_decision_matches_a_reference_reading_of_the_issue(tool: str, scopes: set[str], verified: bool) -> None:
    """Against a direct transcription of the issue's example (without the CEL rule)."""
    policy = build(ISSUE_EXAMPLE[:3])
    decision = policy.decide(Caller({"email_verified": verified}, frozenset(scopes)), call(tool))
    admin = tool.startswith("delete_") or tool.startswith("admin.")
    if not verified:
        assert decision.outcome is Outcome.ACCESS_DENIED
    elif admin and "mcp:admin" not in scopes:
        assert decision.outcome is Outcome.INSUFFICIENT_SCOPE and decision.scopes == ("mcp:admin",)
    else:
        assert decision.allowed


@settings(max_examples=100, deadline=None)
@given(glob=st.text(max_size=12), tool=names)
def test_any_glob_either_compiles_or_is_reported(glob: str, tool: str) -> None:
    policy, problems = compile_policy([{"tools": [glob]}], "deny")
    assert (policy is None) == bool(problems)
    if policy is not None:
        policy.decide(caller(""), call(tool))  # never raises


def test_check_config_command_prints_every_policy_problem(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from sidecar.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:9\npublic_url: https://m.example\naudit_log: off\n"
        "tool_policy:\n  - tools: ['[x']\n    scope: [a]\n  - {}\n  - methods: ['*']\n    when: 'size(jwt.x) >'\n"
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "4 configuration problem(s)" in err
    for text in ("rule 1: unknown key 'scope'", "rule 1: bad glob", "rule 2: empty selector", "rule 3: the CEL"):
        assert text in err
    path.write_text("upstream: http://127.0.0.1:9\npublic_url: https://m.example\naudit_log: off\n")
    assert main(["check-config", "--config", str(path)]) == 0  # YAML's bare `off` is the setting's off
