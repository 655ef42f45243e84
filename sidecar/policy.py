"""Per-tool access policy (issue 15): pure rule compilation and matching, no I/O.

``tool_policy`` is a list of rules. A rule *selects* JSON-RPC messages (``tools``: globs on the ``tools/call``
name; ``methods``: globs on the JSON-RPC method; a message is selected when either list matches) and *requires*
things of the caller: ``scopes`` (all of them), ``claims`` (each claim equals the value, or for a list claim
contains it) and ``when`` (a CEL expression). Every selected rule must be satisfied; a message no rule selects
gets ``tool_policy_default``.

Outcomes (MCP 2025-11-25 "Scope challenge handling", RFC 6750 §3.1):

* missing scopes only -> 403 ``insufficient_scope`` with the scopes the matched rules need, so a client can
  re-authorize with more scopes (step-up);
* a failed claim or ``when`` rule, or the default ``deny`` -> 403 ``access_denied`` (more scopes would not help).

CEL: ``common-expression-language`` (the Rust ``cel`` crate behind a PyO3 module). Chosen over the pure-Python
``cel-python`` because it evaluates a typical rule in ~30 µs against ~1 ms (the policy runs on every request),
ships type stubs, and is actively released; it is imported only when a rule has ``when``. Expressions are
compiled once at start-up; ``check-config`` reports syntax errors, unknown variables and unknown functions.
An expression that fails at run time (a missing claim, a type mismatch) or yields a non-boolean denies: the
policy fails closed.
"""

from __future__ import annotations

import enum
import fnmatch
import functools
import importlib.machinery
import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

from sidecar.mcp_message import within_values

# Bounds of the decision caches (see Policy): distinct (method, tool) pairs, and (caller, method, tool) triples.
SELECTION_CACHE_ENTRIES: Final = 4096
CONTEXT_CACHE_ENTRIES: Final = 4096
RULE_KEYS: Final = frozenset({"tools", "methods", "scopes", "claims", "when"})
MAX_GLOB_CHARS: Final = 256
MAX_WHEN_CHARS: Final = 4096
# The JSON values (objects, arrays and scalars, counted together) of a call's params a CEL condition may see.
# Converting params into CEL values costs ~10 µs per value on the event loop; without a bound one 8 MB body held
# a worker for seconds. A call beyond this is denied by any condition that reads mcp.params (fails closed).
MAX_CEL_PARAM_VALUES: Final = 10_000
CEL_ROOTS: Final = frozenset({"jwt", "mcp"})
# The functions of the CEL standard definitions that this runtime implements (cel-spec "List of Standard
# Definitions"; cel-go's extension libraries such as split() or lowerAscii() are not in the Rust crate). Anything
# else would fail on every request, so check-config reports it.
CEL_FUNCTIONS: Final = frozenset(
    {
        "size", "has", "all", "exists", "exists_one", "map", "filter", "contains", "startsWith", "endsWith",
        "matches", "int", "uint", "double", "string", "bytes", "type", "dyn", "timestamp", "duration",
        "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours",
        "getMinutes", "getSeconds", "getMilliseconds",
    }
)
_MACRO_BINDING = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


class Outcome(enum.Enum):
    ALLOW = "allow"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    ACCESS_DENIED = "access_denied"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one message. ``reason`` is a bounded label (metrics and audit)."""

    outcome: Outcome
    reason: str
    scopes: tuple[str, ...] = ()  # insufficient_scope: every scope the matched rules require

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


ALLOWED_BY_RULES: Final = Decision(Outcome.ALLOW, "rules")
ALLOWED_BY_DEFAULT: Final = Decision(Outcome.ALLOW, "default_allow")
DENIED_BY_DEFAULT: Final = Decision(Outcome.ACCESS_DENIED, "default_deny")
PARAMS_TOO_LARGE: Final = Decision(Outcome.ACCESS_DENIED, "params_too_large")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as far as the policy is concerned. ``claims`` is the CEL ``jwt`` variable."""

    claims: Mapping[str, Any]
    scopes: frozenset[str]


class Call(NamedTuple):
    """One JSON-RPC message: its method, its tool name (``tools/call``) and its params.

    ``params`` is ``None`` when deciding whether to show a tool in ``tools/list``: a rule whose condition reads
    ``mcp.params`` cannot be decided then and never hides a tool.
    """

    method: str
    tool: str | None = None
    params: Any = None


class _Condition:
    """A compiled CEL expression."""

    __slots__ = ("_program", "reads_params", "source")

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program
        # Over-approximated on purpose (a "params" anywhere, even in a string such as mcp["params"]): such a rule
        # gets the full activation at call time and never hides a tool in tools/list.
        self.reads_params = "params" in source

    def holds(self, activation: Any) -> bool:
        try:
            result = self._program.execute(activation)
        except Exception:
            return False
        return result is True


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    tools: tuple[re.Pattern[str], ...]
    methods: tuple[re.Pattern[str], ...]
    scopes: frozenset[str]
    claims: tuple[tuple[str, Any], ...]
    when: _Condition | None

    def selects(self, call: Call) -> bool:
        if call.tool is not None and any(p.fullmatch(call.tool) for p in self.tools):
            return True
        return any(p.fullmatch(call.method) for p in self.methods)


class Policy:
    """A compiled policy. Decisions are pure; two bounded caches make them cheap on the request path:

    * the rules that select a (method, tool) pair (tool names come from clients: bounded, evicted oldest-first);
    * the CEL activation of a caller's claims with one (method, tool), for conditions that do not read
      ``mcp.params`` (converting claims into CEL values costs ~25 µs, evaluating a compiled program ~1 µs), and
      the whole decision when no selected rule reads ``mcp.params``. The key is the claims object itself (the
      authenticators cache it per token), held strongly so its identity cannot be reused while it is cached.
    """

    def __init__(self, rules: tuple[Rule, ...], default_allow: bool) -> None:
        self.rules = rules
        self.default_allow = default_allow
        self.has_conditions = any(r.when is not None for r in rules)
        # (method, tool) -> the rules selecting it, and whether any of their conditions reads mcp.params
        self._selected: dict[tuple[str, str | None], tuple[tuple[Rule, ...], bool]] = {}
        self._contexts: dict[tuple[int, str, str | None], tuple[Mapping[str, Any], Any]] = {}
        self._decisions: dict[tuple[int, str, str | None], tuple[Mapping[str, Any], frozenset[str], Decision]] = {}

    def _rules_for(self, call: Call) -> tuple[tuple[Rule, ...], bool]:
        key = (call.method, call.tool)
        found = self._selected.get(key)
        if found is None:
            rules = tuple(r for r in self.rules if r.selects(call))
            found = (rules, any(r.when is not None and r.when.reads_params for r in rules))
            if len(self._selected) >= SELECTION_CACHE_ENTRIES:
                self._selected.pop(next(iter(self._selected)))
            self._selected[key] = found
        return found

    def _static_context(self, caller: Caller, call: Call) -> Any:
        key = (id(caller.claims), call.method, call.tool)
        hit = self._contexts.get(key)
        if hit is not None and hit[0] is caller.claims:
            return hit[1]
        context = cel_runtime().Context(cel_activation(caller, Call(call.method, call.tool, None)))
        if len(self._contexts) >= CONTEXT_CACHE_ENTRIES:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[key] = (caller.claims, context)
        return context

    def decide(self, caller: Caller, call: Call) -> Decision:
        """The decision for one message (``call.params is None``: the ``tools/list`` view)."""
        rules, reads_params = self._rules_for(call)
        if not rules:
            return ALLOWED_BY_DEFAULT if self.default_allow else DENIED_BY_DEFAULT
        if reads_params:
            return self._decide(caller, call, rules)
        # Nothing here reads the params: the decision depends on the caller and (method, tool) only.
        key = (id(caller.claims), call.method, call.tool)
        hit = self._decisions.get(key)
        if hit is not None and hit[0] is caller.claims and hit[1] == caller.scopes:
            return hit[2]
        decision = self._decide(caller, call, rules)
        if len(self._decisions) >= CONTEXT_CACHE_ENTRIES:
            self._decisions.pop(next(iter(self._decisions)))
        self._decisions[key] = (caller.claims, caller.scopes, decision)
        return decision

    def _decide(self, caller: Caller, call: Call, rules: tuple[Rule, ...]) -> Decision:
        short = False
        for rule in rules:
            if not rule.scopes <= caller.scopes:
                short = True
            for name, want in rule.claims:
                if not claim_matches(caller.claims, name, want):
                    return Decision(Outcome.ACCESS_DENIED, "claim")
            when = rule.when
            if when is not None:
                if when.reads_params:
                    if call.params is None:
                        continue  # decided at call time only
                    if not within_values(call.params, MAX_CEL_PARAM_VALUES):
                        return PARAMS_TOO_LARGE
                    activation: Any = cel_activation(caller, call)
                else:
                    activation = self._static_context(caller, call)
                if not when.holds(activation):
                    return Decision(Outcome.ACCESS_DENIED, "condition")
        if short:
            needed: set[str] = set()
            for rule in rules:
                needed |= rule.scopes
            return Decision(Outcome.INSUFFICIENT_SCOPE, "missing_scope", tuple(sorted(needed)))
        return ALLOWED_BY_RULES

    def visible(self, caller: Caller, tool: str) -> bool:
        """Whether ``tools/list`` should show ``tool`` to this caller (``hide_denied_tools``)."""
        return self.decide(caller, Call("tools/call", tool, None)).allowed


def cel_activation(caller: Caller, call: Call) -> dict[str, Any]:
    mcp: dict[str, Any] = {"method": call.method, "tool": {"name": call.tool if call.tool is not None else ""}}
    if call.params is not None:
        mcp["params"] = call.params
    return {"jwt": dict(caller.claims), "mcp": mcp}


def _same(a: Any, b: Any) -> bool:
    # JSON equality without Python's True == 1: a boolean matches only a boolean.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def claim_value(claims: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """``claims[name]``, else the dotted path (``realm_access.roles``): ``(found, value)``."""
    if name in claims:
        return True, claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def claim_matches(claims: Mapping[str, Any], name: str, want: Any) -> bool:
    found, have = claim_value(claims, name)
    if not found:
        return False
    if isinstance(have, list):
        return any(_same(item, want) for item in have)
    return _same(have, want)


# ---------------------------------------------------------------------------------------------------------
# Compilation (start-up and check-config)


def glob_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return f"{pattern!r} is not a string"
    if not pattern:
        return "an empty glob matches nothing"
    if len(pattern) > MAX_GLOB_CHARS:
        return f"a glob longer than {MAX_GLOB_CHARS} characters"
    if any(not ch.isprintable() for ch in pattern):
        return f"{pattern!r} contains control characters"
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] in "!^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return f"{pattern!r} has a '[' without a closing ']'"
            i = close
        i += 1
    return None


def compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


@functools.cache
def cel_runtime() -> Any:
    """The compiled ``cel`` extension module, without its package's ``__init__``.

    ``import cel`` also imports the package's command-line REPL (typer, rich, prompt_toolkit, pygments: ~30 MB
    per worker). The extension itself is all the sidecar needs, so it is loaded directly from the package
    directory; should the layout ever change, the plain import is the fallback.
    """
    try:
        spec = importlib.util.find_spec("cel")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for path in sorted(p for d in locations for p in Path(d).glob("cel.*.so")):
            loader = importlib.machinery.ExtensionFileLoader("cel", str(path))
            ext_spec = importlib.util.spec_from_file_location("cel", path, loader=loader)
            if ext_spec is None:
                continue
            module = importlib.util.module_from_spec(ext_spec)
            loader.exec_module(module)
            if hasattr(module, "compile") and hasattr(module, "Context"):
                return module
    except (ImportError, OSError):
        pass
    import cel

    return cel


def _cel_problems(source: str) -> tuple[Any, list[str]]:
    cel = cel_runtime()  # the Rust extension: loaded only when a rule has a condition

    try:
        program = cel.compile(source)
    except (ValueError, RuntimeError) as exc:
        return None, [f"the CEL expression does not parse: {' '.join(str(exc).split())[:300]}"]
    problems: list[str] = []
    bound = set(_MACRO_BINDING.findall(source))
    unknown = sorted(set(program.variables()) - CEL_ROOTS - bound)
    if unknown:
        problems.append(
            f"unknown variable(s) {', '.join(unknown)} in the CEL expression; the variables are jwt "
            "(the token's claims) and mcp (method, tool.name, params)"
        )
    functions = {f for f in program.functions() if f[:1].isalpha()}  # operators are _+_, !_, @in, ...
    odd = sorted(functions - CEL_FUNCTIONS)
    if odd:
        problems.append(f"unknown function(s) {', '.join(odd)} in the CEL expression")
    return program, problems


def _string_list(rule: Mapping[str, Any], key: str, where: str, problems: list[str]) -> list[str]:
    value = rule.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        problems.append(f"{where}: '{key}' must be a non-empty list of strings")
        return []
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            problems.append(f"{where}: '{key}' entries must be non-empty strings, not {item!r}")
        else:
            out.append(item)
    return out


def compile_policy(
    raw: Sequence[Any] | None, default: str = "allow"
) -> tuple[Policy | None, list[str]]:
    """Compile ``tool_policy``. Returns the policy (``None`` if there is nothing to enforce) and every problem."""
    problems: list[str] = []
    rules: list[Rule] = []
    for index, rule in enumerate(raw or ()):
        where = f"rule {index + 1}"
        if not isinstance(rule, Mapping):
            problems.append(f"{where}: must be a mapping with tools/methods and scopes/claims/when")
            continue
        for key in sorted(set(map(str, rule)) - RULE_KEYS):
            problems.append(f"{where}: unknown key '{key}' (allowed: {', '.join(sorted(RULE_KEYS))})")
        tools = _string_list(rule, "tools", where, problems)
        methods = _string_list(rule, "methods", where, problems)
        if "tools" not in rule and "methods" not in rule:
            problems.append(f"{where}: empty selector; give 'tools' (globs on tool names) or 'methods'")
        for glob in (*tools, *methods):
            why = glob_problem(glob)
            if why:
                problems.append(f"{where}: bad glob: {why}")
        scopes = _string_list(rule, "scopes", where, problems)
        for scope in scopes:
            if any(ch.isspace() or not ch.isprintable() or ch in '"\\' for ch in scope):
                problems.append(f"{where}: scope {scope!r} must not contain spaces, quotes or backslashes")
        claims_raw = rule.get("claims")
        claims: list[tuple[str, Any]] = []
        if claims_raw is not None:
            if not isinstance(claims_raw, Mapping) or not claims_raw:
                problems.append(f"{where}: 'claims' must be a non-empty mapping of claim name to value")
            else:
                for name, want in claims_raw.items():
                    if not isinstance(name, str) or not name:
                        problems.append(f"{where}: claim names must be non-empty strings")
                    elif not isinstance(want, str | int | float | bool):
                        problems.append(f"{where}: claim '{name}' must equal a string, number or boolean")
                    else:
                        claims.append((name, want))
        when: _Condition | None = None
        source = rule.get("when")
        if source is not None:
            if not isinstance(source, str) or not source.strip():
                problems.append(f"{where}: 'when' must be a non-empty CEL expression")
            elif len(source) > MAX_WHEN_CHARS:
                problems.append(f"{where}: 'when' is longer than {MAX_WHEN_CHARS} characters")
            else:
                program, cel_problems = _cel_problems(source)
                problems += [f"{where}: {p}" for p in cel_problems]
                if program is not None and not cel_problems:
                    when = _Condition(source, program)
        rules.append(
            Rule(
                index=index,
                tools=tuple(compile_glob(g) for g in tools if glob_problem(g) is None),
                methods=tuple(compile_glob(g) for g in methods if glob_problem(g) is None),
                scopes=frozenset(scopes),
                claims=tuple(claims),
                when=when,
            )
        )
    if default not in ("allow", "deny"):
        problems.append("tool_policy_default must be allow or deny")
    if problems:
        return None, problems
    if not rules and default == "allow":
        return None, []
    return Policy(tuple(rules), default == "allow"), []


def needed_scopes(decisions: Iterable[Decision]) -> tuple[str, ...]:
    """The union of the scopes that the denied messages of one request need (one challenge per request)."""
    out: set[str] = set()
    for d in decisions:
        out.update(d.scopes)
    return tuple(sorted(out))


def policy_scopes(settings: Any) -> list[str]:
    """Every scope a ``tool_policy`` rule requires, in order of appearance (broker: scopes a client may request)."""
    out: list[str] = []
    for rule in getattr(settings, "tool_policy", None) or ():
        scopes = rule.get("scopes") if isinstance(rule, Mapping) else None
        for scope in [scopes] if isinstance(scopes, str) else scopes if isinstance(scopes, list) else ():
            if isinstance(scope, str) and scope and scope not in out:
                out.append(scope)
    return out
