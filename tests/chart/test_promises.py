"""What the chart's README and values.yaml promise: hardened pods, probes on /healthz and /readyz, a
Service that reaches the sidecar only, checksum annotations that roll the pods, every sidecar setting
covered and every value documented."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import helm_python as helm
import yaml

from sidecar.config import SECRET_KEYS, Settings
from tests.chart._support import (
    CHART_DIR,
    CI_DIR,
    SIDECAR_CONTAINER,
    Rendered,
    deep_merge,
    load_values,
    pod_containers,
)

GATE = load_values(CI_DIR / "gate-values.yaml")
BROKER = load_values(CI_DIR / "broker-bundled-redis-values.yaml")
# Settings the chart derives from other values instead of taking them under config.*.
DERIVED = {
    "listen",
    "metrics_listen",
    "upstream",
    "workers",
    "redis_mode",
    "redis_url",
    "redis_sentinels",
    "redis_sentinel_master",
    "redis_cluster_nodes",
    "redis_tls",
}


def _pods(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(w["metadata"]["name"], w["spec"]["template"]) for w in rendered.workloads()]


# --- security context ---


def test_pods_are_hardened(deployed: Rendered) -> None:
    pods = _pods(deployed)
    assert pods
    for name, pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for ctr in pod_containers(pod):
            sc = ctr["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, ctr["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, ctr["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, ctr["name"])
            assert "add" not in sc["capabilities"]
            assert not sc.get("privileged", False)


def test_sidecar_runs_as_the_image_user(deployed: Rendered) -> None:
    sc = deployed.sidecar_container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001  # the Dockerfile's USER
    assert "USER 10001" in (CHART_DIR.parents[2] / "Dockerfile").read_text()


# --- probes and ports ---


def test_probes_and_ports(deployed: Rendered, effective_values: dict[str, Any]) -> None:
    ctr = deployed.sidecar_container()
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports == {"http": effective_values["sidecar"]["port"], "metrics": effective_values["sidecar"]["metricsPort"]}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    # The sidecar listens where the probes and the Service look.
    config = yaml.safe_load(deployed.config_map()["data"]["config.yaml"])
    assert config["listen"] == f"0.0.0.0:{ports['http']}"
    assert config["metrics_listen"] == f"0.0.0.0:{ports['metrics']}"


def test_service_targets_the_sidecar_only(rendered: Rendered, effective_values: dict[str, Any]) -> None:
    if not effective_values["deployment"]["enabled"]:
        assert rendered.of_kind("Service") == []
        assert rendered.of_kind("Deployment") == []
        return
    deployment, pod = rendered.sidecar_pod()
    public = rendered.one("Service", deployment["metadata"]["name"])
    assert public["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = public["spec"]["ports"]
    assert port["port"] == effective_values["service"]["port"]
    named = {p["name"]: (c["name"], p["containerPort"]) for c in pod_containers(pod) for p in c.get("ports", [])}
    assert named[port["targetPort"]] == (SIDECAR_CONTAINER, effective_values["sidecar"]["port"])
    # The MCP server publishes no port at all and listens on loopback.
    server = next(c for c in pod["spec"]["containers"] if c["name"] != SIDECAR_CONTAINER)
    assert "ports" not in server
    assert yaml.safe_load(rendered.config_map()["data"]["config.yaml"])["upstream"].startswith("http://127.0.0.1:")
    metrics = [s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-metrics")]
    assert [p["targetPort"] for s in metrics for p in s["spec"]["ports"]] == ["metrics"]


def test_network_policy_opens_only_the_sidecar_ports(rendered: Rendered) -> None:
    for policy in rendered.of_kind("NetworkPolicy"):
        if policy["metadata"]["name"].endswith("-redis"):
            peers = policy["spec"]["ingress"][0]["from"]
            assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "mcp-auth-sidecar"
            continue
        ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
        assert ports == ["http", "metrics"]


# --- checksums ---


def _annotations(rendered: Rendered) -> dict[str, str]:
    return rendered.sidecar_pod()[1]["metadata"].get("annotations", {})


def test_checksum_config_is_the_config_file(deployed: Rendered) -> None:
    text = deployed.config_map()["data"]["config.yaml"]
    assert _annotations(deployed)["checksum/config"] == hashlib.sha256(text.encode()).hexdigest()


def test_checksums_follow_their_inputs(render: Callable[[dict[str, Any]], Rendered]) -> None:
    base = _annotations(render(BROKER))
    config_changed = _annotations(render(deep_merge(BROKER, {"config": {"access_token_ttl_seconds": 600}})))
    secret_changed = _annotations(render(deep_merge(BROKER, {"secrets": {"idpClientSecret": "rotated"}})))
    assert config_changed["checksum/config"] != base["checksum/config"]
    assert config_changed["checksum/secret"] == base["checksum/secret"]
    assert secret_changed["checksum/secret"] != base["checksum/secret"]
    assert secret_changed["checksum/config"] == base["checksum/config"]
    # Deterministic: the same values give the same annotations.
    assert _annotations(render(BROKER)) == base


def test_checksum_secret_only_for_the_charts_own_secret(render: Callable[[dict[str, Any]], Rendered]) -> None:
    assert "checksum/secret" not in _annotations(render(GATE))  # gate mode: no Secret at all
    assert render(GATE).of_kind("Secret") == []
    existing = deep_merge(BROKER, {"secrets": {"existingSecret": "mine"}})
    assert "checksum/secret" not in _annotations(render(existing))
    assert "checksum/secret" in _annotations(render(BROKER))


def test_bundled_redis_rolls_with_its_password(render: Callable[[dict[str, Any]], Rendered]) -> None:
    def redis_checksum(values: dict[str, Any]) -> str:
        (sts,) = render(values).of_kind("StatefulSet")
        return str(sts["spec"]["template"]["metadata"]["annotations"]["checksum/secret"])

    assert redis_checksum(BROKER) != redis_checksum(deep_merge(BROKER, {"secrets": {"redisPassword": "other"}}))


# --- every sidecar setting is reachable, every value documented ---


def test_every_sidecar_setting_has_a_home() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    in_config = set(schema["properties"]["config"]["properties"])
    assert in_config | DERIVED | SECRET_KEYS == set(Settings.model_fields)
    assert not in_config & (DERIVED | SECRET_KEYS)


def test_config_defaults_match_the_sidecar() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["config"]
    for key, value in defaults.items():
        if value in (None, ""):
            continue  # null: the sidecar's (mode-dependent) default; "": required
        field = Settings.model_fields[key]
        expected = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        assert value == expected, key


def _schema_node(schema: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in path:
        node = (node or {}).get("properties", {}).get(part)
        if node is None:
            return None
    return node


def test_values_are_documented_key_by_key() -> None:
    """Every key the schema declares has a comment right above it (or, for a group of sibling keys
    such as secrets.keys.*, in the comment above the group that names it). Keys inside free-form
    Kubernetes objects (securityContext, resources, ...) are example data, not settings."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key, _ = m.groups()
        while stack and stack[-1][0] >= len(indent):
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((len(indent), key))
        node = _schema_node(schema, path)
        if node is None or "properties" in node:
            continue  # free-form data, or a structured block whose own keys are checked
        j = i - 1
        while j >= 0 and re.match(rf"^{indent}[A-Za-z_][\w.-]*:", lines[j]):
            j -= 1  # walk over sibling keys to the comment that introduces the group
        comment = []
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.append(lines[j])
            j -= 1
        if not comment or (lines[i - 1].strip()[:1] != "#" and key not in " ".join(comment)):
            undocumented.append(f"{i + 1}: {'.'.join(path)}")
    assert undocumented == []


def test_notes_give_the_mcp_url(rendered: Rendered, effective_values: dict[str, Any]) -> None:
    public = effective_values["config"]["public_url"].rstrip("/")
    assert f"{public}{effective_values['mcpServer']['path']}" in rendered.notes


def test_chart_metadata(chart: helm.Chart) -> None:
    meta = chart.metadata
    assert meta["name"] == "mcp-auth-sidecar"
    assert meta["appVersion"] == "0.1.0"
    from sidecar import __version__

    assert meta["appVersion"] == __version__
