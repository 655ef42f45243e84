"""ARCHITECTURE.md is kept true: the code map names every module, the import graph has no cycles (imports
inside functions counted), and imports point down the layers the document describes (issue 14)."""

from __future__ import annotations

import ast
import re

from tests.architecture.imports import PACKAGE, ROOT, cycles, graph, modules

DOC = (ROOT / "ARCHITECTURE.md").read_text()

# The layers of ARCHITECTURE.md, lowest first. A module may import only from its own layer or a lower one.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "sidecar",
            "sidecar.config",
            "sidecar.problems",
            "sidecar.challenge",
            "sidecar.tokens",
            "sidecar.crypto",
            "sidecar.singleflight",
            "sidecar.ttlcache",
            "sidecar.providers",
            "sidecar.logs",
            "sidecar.cors",
            "sidecar.headers",
            "sidecar.metadata",
            "sidecar.metrics",
            "sidecar.health",
            "sidecar.policy",
            "sidecar.mcp_message",
            "sidecar.tool_filter",
        ],
    ),
    (
        "adapters",
        [
            "sidecar.bounded",
            "sidecar.audit",
            "sidecar.http1",
            "sidecar.connection",
            "sidecar.backend",
            "sidecar.idp",
            "sidecar.idp.errors",
            "sidecar.idp.values",
            "sidecar.idp.transport",
            "sidecar.idp.discovery",
            "sidecar.idp.id_token",
            "sidecar.idp.client",
            "sidecar.keyset",
            "sidecar.jwks",
            "sidecar.store",
        ],
    ),
    (
        "engines",
        ["sidecar.guard", "sidecar.inject", "sidecar.auth", "sidecar.refresh", "sidecar.broker", "sidecar.proxy"],
    ),
    ("state", ["sidecar.keys"]),
    ("front door", ["sidecar.oauth"]),
    ("wiring", ["sidecar.admin", "sidecar.app", "sidecar.server", "sidecar.cli", "sidecar.__main__", "sidecar.demo"]),
]

# Modules that decide and never do I/O: no network, storage or clock libraries.
PURE = [
    "sidecar.ttlcache",
    "sidecar.tokens",
    "sidecar.providers",
    "sidecar.crypto",
    "sidecar.config",
    "sidecar.config.model",
    "sidecar.config.loading",
    "sidecar.config.checks",
    "sidecar.headers",
    "sidecar.inject",
    "sidecar.policy",
    "sidecar.mcp_message",
    "sidecar.tool_filter",
    "sidecar.store.records",
    "sidecar.store.codecs",
    "sidecar.store.layout",
]
IO_LIBRARIES = {"aiohttp", "redis", "socket", "asyncio", "time", "httptools", "ssl"}


def _layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), number)
    assert best is not None, f"{module} is in no layer of ARCHITECTURE.md: add it to tests/architecture LAYERS"
    return best[1]


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    assert cycles(graph(include_type_checking=False)) == []


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in graph(include_type_checking=True).items():
        for target in targets:
            low, high = _layer_of(module), _layer_of(target)
            if high > low:
                wrong.append(f"{module} ({LAYERS[low][0]}) imports {target} ({LAYERS[high][0]})")
    assert wrong == []


def test_pure_modules_do_no_io() -> None:
    for module in PURE:
        path = modules()[module]
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & IO_LIBRARIES, f"{module} imports {imported & IO_LIBRARIES}"


def test_code_map_names_every_module_and_nothing_else() -> None:
    mapped = set(re.findall(r"`(sidecar/[\w/]+\.py)`", DOC))
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert actual - mapped == set(), "modules missing from ARCHITECTURE.md's code map"
    assert mapped - actual == set(), "ARCHITECTURE.md names modules that do not exist"


def test_the_document_names_the_layers_and_invariants() -> None:
    for name, _ in LAYERS:
        assert f"**{name}**" in DOC, name
    for invariant in ("never sees an unchecked request", "stored before it is used", "client's token never reaches"):
        assert invariant in DOC
