"""``sidecar.native``: the sidecar as a Kubernetes native sidecar (init container with ``restartPolicy: Always``,
Kubernetes >= 1.29) or as a second regular container; and a grace period that covers its graceful stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from sidecar.config import Settings
from sidecar.server import grace_period_seconds
from tests.chart._support import CHART_DIR, CI_DIR, SIDECAR_CONTAINER, Rendered, deep_merge, load_values

GATE = load_values(CI_DIR / "gate-values.yaml")


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    _, pod = rendered.sidecar_pod()
    return dict(pod["spec"])


def test_native_layout(render: Callable[[dict[str, Any]], Rendered]) -> None:
    spec = pod_spec(render(deep_merge(GATE, {"sidecar": {"native": True}})))
    (init,) = spec["initContainers"]
    assert init["name"] == SIDECAR_CONTAINER
    assert init["restartPolicy"] == "Always"  # runs beside the server, started first, stopped last
    assert init["startupProbe"]["httpGet"]["path"] == "/healthz"  # the server starts once the sidecar answers
    assert init["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [c["name"] for c in spec["containers"]] == ["mcp-server"]


def test_classic_layout(render: Callable[[dict[str, Any]], Rendered]) -> None:
    rendered = render(deep_merge(GATE, {"sidecar": {"native": False}}))
    spec = pod_spec(rendered)
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == [SIDECAR_CONTAINER, "mcp-server"]
    assert all("restartPolicy" not in c for c in spec["containers"])
    # The classic layout is what clusters before 1.29 get: it validates against their API.
    for obj in rendered.objects:
        if obj["kind"] in ("Deployment", "Service", "ConfigMap"):
            kubernetes_validate.validate(obj, "1.28.0", strict=True)


def test_auto_follows_the_cluster_version(render: Callable[[dict[str, Any]], Rendered]) -> None:
    # Helm's offline render reports a current Kubernetes (>= 1.29), so auto means native here; the lint runs
    # below render the same values against 1.28 and 1.33.
    assert GATE.get("sidecar", {}).get("native", "auto") == "auto"
    assert "initContainers" in pod_spec(render(GATE))
    for version in ("v1.28.0", "v1.33.0"):
        report = helm.lint(
            CHART_DIR,
            GATE, strict=True, kube_version=version, namespace="mcp",
        )  # fmt: skip
        assert report["errors"] == [], version


def test_grace_period_covers_the_graceful_stop(render: Callable[[dict[str, Any]], Rendered]) -> None:
    defaults = Settings()
    assert grace_period_seconds(defaults) == 32
    deployment, _ = render(GATE).sidecar_pod()
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace_period_seconds(defaults)
    with pytest.raises(helm.HelmRenderError) as err:
        render(deep_merge(GATE, {"terminationGracePeriodSeconds": 30}))
    assert "terminationGracePeriodSeconds (30) must cover" in str(err.value)
    shorter = {
        "terminationGracePeriodSeconds": 20,
        "config": {"shutdown_delay_seconds": 3, "shutdown_timeout_seconds": 10},
    }
    deployment, _ = render(deep_merge(GATE, shorter)).sidecar_pod()
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20
    config = render(deep_merge(GATE, shorter)).config_map()["data"]["config.yaml"]
    assert "shutdown_delay_seconds: 3" in config and "shutdown_timeout_seconds: 10" in config
