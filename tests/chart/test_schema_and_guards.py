"""values.schema.json rejects bad values, and the templates refuse what cannot run, saying why."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import helm_python as helm
import pytest

from tests.chart._support import CHART_DIR, CI_DIR, Rendered, deep_merge, load_values, render_chart

GATE = load_values(CI_DIR / "gate-values.yaml")
BROKER = load_values(CI_DIR / "broker-bundled-redis-values.yaml")
SENTINEL = load_values(CI_DIR / "broker-external-sentinel-values.yaml")
BROKER_MEMORY = deep_merge(
    {k: v for k, v in BROKER.items() if k != "autoscaling"}, {"replicaCount": 1, "config": {"store": "memory"}}
)

# (base values, override, text the error must contain: the offending path)
BAD_VALUES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "replicaCount as a string": (GATE, {"replicaCount": "two"}, "/replicaCount"),
    "port as a string": (GATE, {"sidecar": {"port": "8080"}}, "/sidecar/port"),
    "port out of range": (GATE, {"mcpServer": {"port": 70000}}, "/mcpServer/port"),
    "boolean as a string": (GATE, {"config": {"force_consent": "yes"}}, "/config/force_consent"),
    "list as a string": (GATE, {"config": {"audience": "a,b"}}, "/config/audience"),
    "unknown mode": (GATE, {"config": {"mode": "proxy"}}, "/config/mode"),
    "unknown store": (GATE, {"config": {"store": "postgres"}}, "/config/store"),
    "unknown client_token": (BROKER, {"config": {"client_token": "jwt"}}, "/config/client_token"),
    "unknown redis type": (BROKER, {"redis": {"type": "sentinel"}}, "/redis/type"),
    "unknown redis mode": (
        BROKER,
        {"redis": {"type": "external", "external": {"mode": "replicated"}}},
        "/redis/external/mode",
    ),
    "bad redis url scheme": (BROKER, {"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
    "sentinel without port": (SENTINEL, {"redis": {"external": {"sentinels": ["s-0"]}}}, "/redis/external/sentinels/0"),
    "unknown top-level key": (GATE, {"replicas": 2}, "replicas"),
    "typo in config key": (GATE, {"config": {"leeway_secs": 5}}, "leeway_secs"),
    "derived key in config": (GATE, {"config": {"upstream": "http://127.0.0.1:1"}}, "upstream"),
    "secret in config": (BROKER, {"config": {"encryption_keys": "k:abc"}}, "encryption_keys"),
    "malformed key ring": (BROKER, {"secrets": {"encryptionKeys": "no key id"}}, "/secrets/encryptionKeys"),
    "memory store with replicas > 1 (broker)": (BROKER_MEMORY, {"replicaCount": 2}, "/config/store"),
    "memory store with autoscaling (broker)": (BROKER_MEMORY, {"autoscaling": {"enabled": True}}, "/config/store"),
    "memory store with workers > 1 (broker)": (BROKER_MEMORY, {"sidecar": {"workers": 2}}, "/config/store"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects(case: str, chart: helm.Chart) -> None:
    base, override, where = BAD_VALUES[case]
    values = deep_merge(base, override)
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values, name="demo", namespace="mcp")
    assert where in str(err.value)


def test_schema_accepts_every_scenario_and_the_edges(render: Callable[[dict[str, Any]], Rendered]) -> None:
    # Gate mode keeps no tokens: the memory store scales out there.
    assert render(deep_merge(GATE, {"replicaCount": 4})).sidecar_pod()[0]["spec"]["replicas"] == 4
    assert render(BROKER_MEMORY).sidecar_pod()[0]["spec"]["replicas"] == 1
    for path in sorted(CI_DIR.glob("*-values.yaml")):
        render(load_values(path))


@pytest.fixture(scope="module")
def schemaless_chart(tmp_path_factory: pytest.TempPathFactory) -> helm.Chart:
    """The chart without values.schema.json: the template guards must still refuse, and explain."""
    target = tmp_path_factory.mktemp("schemaless") / CHART_DIR.name
    shutil.copytree(CHART_DIR, target)
    (target / "values.schema.json").unlink()
    return helm.Chart.load(target)


GUARDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "broker without an encryption key source": (
        deep_merge(BROKER, {"secrets": {"encryptionKeys": ""}}),
        ["broker mode has no encryption key source", "mcp-auth-sidecar keygen", "secrets.existingSecret"],
    ),
    "broker without the IdP client secret": (
        deep_merge(BROKER, {"secrets": {"idpClientSecret": ""}}),
        ["secrets.idpClientSecret"],
    ),
    "memory store with replicas > 1": (
        deep_merge(BROKER_MEMORY, {"replicaCount": 3}),
        ["config.store=memory", "inside one pod", "logged out", "config.store=redis"],
    ),
    "memory store with autoscaling": (
        deep_merge(BROKER_MEMORY, {"autoscaling": {"enabled": True}}),
        ["config.store=memory", "autoscaling.enabled"],
    ),
    "no public_url": (deep_merge(GATE, {"config": {"public_url": ""}}), ["config.public_url is required"]),
    "no MCP server image": (
        deep_merge(GATE, {"mcpServer": {"image": {"repository": ""}}}),
        ["mcpServer.image.repository"],
    ),
    "external standalone Redis without url": (
        deep_merge(BROKER, {"redis": {"type": "external"}}),
        ["redis.external.url"],
    ),
    "sentinel without master": (
        deep_merge(BROKER, {"redis": {"type": "external", "external": {"mode": "sentinel", "sentinels": ["s:26379"]}}}),
        ["redis.external.sentinelMaster"],
    ),
}


@pytest.mark.parametrize("case", sorted(GUARDS))
def test_template_guards_say_why(case: str, schemaless_chart: helm.Chart, chart: helm.Chart) -> None:
    values, phrases = GUARDS[case]
    for subject in (schemaless_chart, chart):
        with pytest.raises((helm.HelmRenderError, helm.HelmValuesError)) as err:
            render_chart(subject, values)
        if subject is schemaless_chart:
            assert isinstance(err.value, helm.HelmRenderError)
            for phrase in phrases:
                assert phrase in str(err.value)


def test_existing_secret_is_a_key_source(render: Callable[[dict[str, Any]], Rendered]) -> None:
    values = deep_merge(BROKER, {"secrets": {"encryptionKeys": "", "idpClientSecret": "", "existingSecret": "mine"}})
    env = {e["name"]: e for e in render(values).sidecar_container()["env"]}
    assert env["MCP_SIDECAR_ENCRYPTION_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "encryption-keys"}


def test_schema_documents_every_property() -> None:
    import json

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert "type" in sub or "enum" in sub or "anyOf" in sub, f"{path}.{name} has no type"
            walk(sub, f"{path}.{name}")

    walk(schema, "")
    assert schema["additionalProperties"] is False
