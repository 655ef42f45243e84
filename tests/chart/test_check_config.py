"""The rendered sidecar container runs: its command, environment and mounted config file are fed to the
real `mcp-auth-sidecar check-config`, which must accept them. This catches values that render but would
not start (a missing key, a secret that never reaches the container, a relation check-config enforces)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart._support import (
    CI_DIR,
    CONFIG_PATH,
    FAKE_EXISTING_SECRET,
    SUBCHART_KEY,
    Rendered,
    deep_merge,
    load_values,
    render_chart,
    run_check_config,
)

BROKER = load_values(CI_DIR / "broker-bundled-redis-values.yaml")
SENTINEL = load_values(CI_DIR / "broker-external-sentinel-values.yaml")

# Variants beyond the ci scenarios: each Redis topology and the single-replica memory store.
VARIANTS: dict[str, dict[str, Any]] = {
    "external-standalone-tls": deep_merge(
        SENTINEL,
        {
            "redis": {
                "external": {"mode": "standalone", "url": "rediss://redis.example.internal:6380/2", "sentinels": []}
            }
        },
    ),
    "external-cluster": deep_merge(
        SENTINEL,
        {
            "redis": {
                "external": {
                    "mode": "cluster",
                    "sentinels": [],
                    "clusterNodes": ["redis-0.redis:6379", "redis-1.redis:6379", "redis-2.redis:6379"],
                }
            }
        },
    ),
    "broker-memory-one-replica": deep_merge(
        {k: v for k, v in BROKER.items() if k not in ("autoscaling", "redis")},
        {"replicaCount": 1, "config": {"store": "memory"}, "secrets": {"redisPassword": ""}},
    ),
    "bundled-redis-without-password": deep_merge(BROKER, {"secrets": {"redisPassword": ""}}),
}


def _effective(run_stdout: str) -> dict[str, Any]:
    data = json.loads(run_stdout)
    assert isinstance(data, dict)
    return data


def _check(deployed: Rendered, sidecar_values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    _, pod = deployed.sidecar_pod()
    ctr = deployed.sidecar_container()
    run = run_check_config(deployed, pod, ctr, sidecar_values, tmp_path)
    assert run.returncode == 0, f"check-config refused the rendered container:\n{run.stderr}\nargv={run.argv}"
    return _effective(run.stdout)


def test_check_config_accepts_scenario(deployed: Rendered, effective_values: dict[str, Any], tmp_path: Path) -> None:
    eff = _check(deployed, effective_values, tmp_path)
    cfg = effective_values["config"]
    assert eff["mode"] == cfg["mode"]
    assert eff["public_url"] == cfg["public_url"]
    assert eff["upstream"] == f"http://{effective_values['mcpServer']['host']}:{effective_values['mcpServer']['port']}"
    assert eff["listen"] == f"0.0.0.0:{effective_values['sidecar']['port']}"
    assert eff["metrics_listen"] == f"0.0.0.0:{effective_values['sidecar']['metricsPort']}"
    assert eff["store"] == cfg["store"]
    if cfg["mode"] == "broker":
        # The secrets reached the container through the environment (masked in the output).
        assert eff["encryption_keys"] == "***"
        assert eff["idp_client_secret"] == "***"
    if cfg["store"] == "redis":
        redis = effective_values["redis"]
        expected_mode = "standalone" if redis["type"] == "bundled" else redis["external"]["mode"]
        assert eff["redis_mode"] == expected_mode


def test_scenario_overrides_reach_the_sidecar(tmp_path: Path, chart: helm.Chart) -> None:
    """Env set in sidecar.extraEnv wins over the file, as in the sidecar's precedence rules."""
    eff = _check(render_chart(chart, SENTINEL), chart.merge_values(SENTINEL), tmp_path)
    assert eff["log_level"] == "warning"
    assert eff["redis_sentinels"] == SENTINEL["redis"]["external"]["sentinels"]
    assert eff["redis_sentinel_master"] == "mymaster"
    assert eff["redis_tls"] is True
    assert eff["workers"] == 2
    assert eff["redis_password"] == "***"  # from the existing Secret's key


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_check_config_accepts_variant(variant: str, chart: helm.Chart, tmp_path: Path) -> None:
    values = VARIANTS[variant]
    eff = _check(render_chart(chart, values), chart.merge_values(values), tmp_path)
    if variant == "external-cluster":
        assert eff["redis_cluster_nodes"] == values["redis"]["external"]["clusterNodes"]
    if variant == "external-standalone-tls":
        assert eff["redis_url"] == "***"
    if variant == "bundled-redis-without-password":
        assert eff["redis_password"] is None


def test_harness_catches_values_that_render_but_do_not_run(
    render: Callable[[dict[str, Any]], Rendered], chart: helm.Chart, tmp_path: Path
) -> None:
    """A relation only check-config knows (lock TTL > IdP timeout) renders fine and must fail here."""
    values = deep_merge(BROKER, {"config": {"idp_timeout_seconds": 20, "refresh_lock_seconds": 15}})
    deployed = render(values)
    _, pod = deployed.sidecar_pod()
    run = run_check_config(deployed, pod, deployed.sidecar_container(), chart.merge_values(values), tmp_path)
    assert run.returncode == 2
    assert "refresh_lock_seconds" in run.stderr


def test_existing_secret_keys_are_the_named_ones(chart: helm.Chart) -> None:
    deployed = render_chart(chart, SENTINEL)
    env = {e["name"]: e for e in deployed.sidecar_container()["env"]}
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in env if "valueFrom" in env[name]}
    assert refs == {
        "MCP_SIDECAR_ENCRYPTION_KEYS": {"name": "docs-mcp-sidecar-secrets", "key": "key-ring"},
        "MCP_SIDECAR_IDP_CLIENT_SECRET": {"name": "docs-mcp-sidecar-secrets", "key": "google-client-secret"},
        # Optional: an existing Secret may have no Redis password.
        "MCP_SIDECAR_REDIS_PASSWORD": {
            "name": "docs-mcp-sidecar-secrets",
            "key": "sentinel-redis-password",
            "optional": True,
        },
    }
    assert deployed.of_kind("Secret") == []
    assert set(FAKE_EXISTING_SECRET) == set(SENTINEL["secrets"]["keys"])


def test_secrets_never_reach_the_configmap(chart: helm.Chart) -> None:
    deployed = render_chart(chart, BROKER)
    config_text = deployed.config_map()["data"]["config.yaml"]
    config = yaml.safe_load(config_text)
    assert not {"encryption_keys", "idp_client_secret", "redis_password"} & set(config)
    for key in ("encryptionKeys", "idpClientSecret", "redisPassword"):
        for part in BROKER["secrets"][key].split(","):
            assert part not in config_text
    # ... and they do reach the Secret, under the documented key names.
    data = deployed.one("Secret")["stringData"]
    assert data == {
        "encryption-keys": BROKER["secrets"]["encryptionKeys"],
        "idp-client-secret": BROKER["secrets"]["idpClientSecret"],
        "redis-password": BROKER["secrets"]["redisPassword"],
    }


def test_container_reads_the_mounted_config(deployed: Rendered) -> None:
    ctr = deployed.sidecar_container()
    assert ctr["command"] == ["mcp-auth-sidecar"]
    assert ctr["args"] == ["serve", "--config", CONFIG_PATH]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["MCP_SIDECAR_CONFIG"] == CONFIG_PATH
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    assert mounts["/etc/mcp-auth-sidecar"]["readOnly"] is True


def test_own_chart_parent_gets_the_sidecar(own_chart: helm.Chart, tmp_path: Path) -> None:
    values = load_values(CI_DIR / "own-chart-values.yaml")
    deployed = render_chart(own_chart, {SUBCHART_KEY: values})
    deployment, pod = deployed.sidecar_pod()
    assert deployment["metadata"]["name"] == "demo-my-mcp-app"
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["app", "mcp-auth-sidecar"]
    cm = deployed.one("ConfigMap", "my-mcp-app-sidecar-config")
    assert yaml.safe_load(cm["data"]["config.yaml"])["upstream"] == "http://127.0.0.1:9000"
    # The user's chart renders the workload: the sidecar chart renders no Deployment or Service of its own.
    assert [d["metadata"]["name"] for d in deployed.of_kind("Deployment")] == ["demo-my-mcp-app"]
    assert [s["metadata"]["name"] for s in deployed.of_kind("Service")] == ["demo-my-mcp-app"]
    eff = _check(deployed, own_chart.merge_values({SUBCHART_KEY: values})[SUBCHART_KEY], tmp_path)
    assert eff["allowed_origins"] == ["https://app.example.com"]
