"""The optional Grafana dashboard (a ConfigMap Grafana's sidecar picks up) and PrometheusRule alerts: they render,
have the shape their consumers require, and query only metrics the sidecar (or a sibling feature) exports."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema

from sidecar.metrics import Metrics
from tests.chart._support import CI_DIR, Rendered, deep_merge, load_values

MONITORING = load_values(CI_DIR / "gate-classic-monitoring-values.yaml")
# Metrics other features export (the audit trail of the policy feature); named in alerts ahead of them.
EXPORTED_ELSEWHERE = {"mcp_sidecar_audit_dropped_total"}

# The parts of the PrometheusRule CRD (monitoring.coreos.com/v1) the operator rejects when wrong.
RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def known_metrics() -> set[str]:
    names = set(EXPORTED_ELSEWHERE)
    for family in Metrics().registry.collect():
        for sample_suffix in ("", "_total", "_bucket", "_count", "_sum"):
            names.add(family.name + sample_suffix)
    return names


def metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(mcp_sidecar_[a-z_]+)\b", expr))


def balanced(expr: str) -> bool:
    pairs = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    for ch in re.sub(r'"[^"]*"', "", expr):
        if ch in "({[":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def test_off_by_default(render: Callable[[dict[str, Any]], Rendered]) -> None:
    plain = render(load_values(CI_DIR / "gate-values.yaml"))
    assert plain.of_kind("PrometheusRule") == []
    assert not [c for c in plain.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_prometheus_rule_alerts(render: Callable[[dict[str, Any]], Rendered]) -> None:
    rule = render(MONITORING).one("PrometheusRule")
    jsonschema.validate(rule, RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert set(alerts) == {
        "McpSidecarHighErrorRate",
        "McpSidecarUpstreamRefreshFailures",
        "McpSidecarStoreUnavailable",
        "McpSidecarRateLimited",
        "McpSidecarAuditDropped",
    }
    known = known_metrics()
    for name, r in alerts.items():
        assert balanced(r["expr"]), name
        assert metrics_in(r["expr"]) and metrics_in(r["expr"]) <= known, (name, metrics_in(r["expr"]) - known)
        # Scoped to this release's metrics Service, as the ServiceMonitor scrapes it.
        assert 'service="demo-mcp-auth-sidecar-metrics"' in r["expr"] and 'namespace="mcp"' in r["expr"], name
        assert r["labels"]["severity"]
    assert "> 0.05" in alerts["McpSidecarHighErrorRate"]["expr"]
    tuned = render(deep_merge(MONITORING, {"metrics": {"prometheusRule": {"errorRatio": 0.2, "for": "3m"}}}))
    high = next(r for r in tuned.one("PrometheusRule")["spec"]["groups"][0]["rules"] if r["alert"].endswith("Rate"))
    assert "> 0.2" in high["expr"] and high["for"] == "3m"


def test_grafana_dashboard_configmap(render: Callable[[dict[str, Any]], Rendered]) -> None:
    cm = render(MONITORING).one("ConfigMap", "demo-mcp-auth-sidecar-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "MCP"}
    dashboard = json.loads(cm["data"]["mcp-auth-sidecar.json"])
    assert dashboard["uid"] == "mcp-auth-sidecar" and dashboard["panels"]
    known = known_metrics()
    queried: set[str] = set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert balanced(target["expr"]), panel["title"]
            queried |= metrics_in(target["expr"])
    assert queried <= known, queried - known
    # Every metric family the sidecar exports has a panel.
    exported = {f.name for f in Metrics().registry.collect()}
    assert {q.removesuffix("_total").removesuffix("_bucket") for q in queried} >= exported
