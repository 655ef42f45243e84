"""Every ci/*-values.yaml scenario lints clean and renders objects valid for a fixed Kubernetes version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate

from tests.chart._support import CHART_DIR, CI_DIR, KUBE_VERSION, SUBCHART_KEY, Rendered, load_values

# Custom resources kubernetes-validate has no schema for; checked by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def _lint_findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    # Severity 1 is "info" (e.g. "icon is recommended"); 2 warning, 3 error.
    return [m for m in report["messages"] if m["severity"] >= 2]


def test_lint_clean(scenario_values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, scenario_values, strict=True, kube_version=f"v{KUBE_VERSION}", namespace="mcp")
    assert report["errors"] == []
    assert _lint_findings(report) == []


def test_own_chart_lints_clean(own_chart_dir: Path) -> None:
    values = {SUBCHART_KEY: load_values(CI_DIR / "own-chart-values.yaml")}
    report = helm.lint(own_chart_dir, values, strict=True, with_subcharts=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert _lint_findings(report) == []


def test_every_object_validates(deployed: Rendered, rendered: Rendered) -> None:
    # For the own-chart scenario: the chart alone (ConfigMap, Secret) and the user's chart around it.
    objects = rendered.objects + (deployed.objects if deployed is not rendered else [])
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_service_monitor_shape(rendered: Rendered) -> None:
    for sm in rendered.of_kind("ServiceMonitor"):
        metrics = [s for s in rendered.of_kind("Service") if s["metadata"]["name"].endswith("-metrics")]
        assert len(metrics) == 1
        svc = metrics[0]
        selector = sm["spec"]["selector"]["matchLabels"]
        assert selector.items() <= svc["metadata"]["labels"].items()
        # Only the metrics Service carries the component label: the ServiceMonitor never scrapes the public one.
        public = rendered.one("Service", rendered.sidecar_pod()[0]["metadata"]["name"])
        assert not selector.items() <= public["metadata"]["labels"].items()
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert sm["spec"]["namespaceSelector"]["matchNames"] == ["mcp"]
