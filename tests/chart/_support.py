"""Rendering the chart with Helm's own engine and reading what it produced.

Helm runs in-process through ``helm_python`` (the Helm v4 Go SDK behind a C ABI), so no ``helm``
binary, cluster or network is involved. Everything here is pure apart from the renders themselves.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "mcp-auth-sidecar"
CI_DIR = CHART_DIR / "ci"
OWN_CHART_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "my-mcp-app"
SUBCHART_KEY = "mcp-auth-sidecar"

# The Kubernetes version every object is validated against (kubernetes-validate ships its schemas).
KUBE_VERSION = "1.33.0"
RELEASE = "demo"
NAMESPACE = "mcp"
SIDECAR_CONTAINER = "mcp-auth-sidecar"
CONFIG_PATH = "/etc/mcp-auth-sidecar/config.yaml"

# What an existingSecret would hold: a valid key ring (the sidecar checks its format) and stand-ins.
FAKE_EXISTING_SECRET = {
    "encryptionKeys": "fake1:" + base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("="),
    "idpClientSecret": "fake-idp-client-secret",
    "redisPassword": "fake-redis-password",
}


def scenario_files() -> list[Path]:
    return sorted(CI_DIR.glob("*-values.yaml"))


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data, dict)
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Rendered:
    """One render: the parsed objects (templates in a stable order) and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str
    values: dict[str, Any]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    def config_map(self) -> dict[str, Any]:
        """The sidecar's own ConfigMap (the one holding config.yaml; the dashboard's is another)."""
        found = [o for o in self.of_kind("ConfigMap") if "config.yaml" in o.get("data", {})]
        assert len(found) == 1, [o["metadata"]["name"] for o in self.of_kind("ConfigMap")]
        return found[0]

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in ("Deployment", "StatefulSet")]

    def sidecar_pod(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (Deployment, pod template) that carries the sidecar container."""
        hits = [
            (w, w["spec"]["template"])
            for w in self.of_kind("Deployment")
            if any(c["name"] == SIDECAR_CONTAINER for c in pod_containers(w["spec"]["template"]))
        ]
        assert len(hits) == 1, "expected exactly one Deployment with the sidecar container"
        return hits[0]

    def sidecar_container(self) -> dict[str, Any]:
        _, pod = self.sidecar_pod()
        return container(pod, SIDECAR_CONTAINER)


def pod_containers(pod_template: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pod's containers, native sidecars (init containers with restartPolicy: Always) included."""
    spec = pod_template["spec"]
    native = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    return native + list(spec["containers"])


def container(pod_template: Mapping[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_containers(pod_template) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def render_chart(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(manifests):
        text = manifests[path]
        if path.endswith("NOTES.txt"):
            if "/charts/" not in path or not notes:
                notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return Rendered(objects, notes, values)


def prepare_own_chart(dest: Path) -> Path:
    """The user's chart with this chart vendored into charts/, as `helm dependency update` leaves it."""
    target = dest / OWN_CHART_FIXTURE.name
    shutil.copytree(OWN_CHART_FIXTURE, target)
    shutil.copytree(CHART_DIR, target / "charts" / CHART_DIR.name, ignore=shutil.ignore_patterns("ci"))
    return target


# --- feeding the rendered container to the real `mcp-auth-sidecar check-config` ---


def secret_values(rendered: Rendered, name: str) -> dict[str, str] | None:
    for secret in rendered.of_kind("Secret"):
        if secret["metadata"]["name"] == name:
            out = {k: str(v) for k, v in (secret.get("stringData") or {}).items()}
            for k, v in (secret.get("data") or {}).items():
                out[k] = base64.b64decode(v).decode()
            return out
    return None


def resolve_env(rendered: Rendered, sidecar_values: Mapping[str, Any], env: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet would build it; existingSecret keys get fake values."""
    secrets_cfg = sidecar_values["secrets"]
    existing = secrets_cfg.get("existingSecret") or ""
    fake_by_key = {secrets_cfg["keys"][k]: v for k, v in FAKE_EXISTING_SECRET.items()}
    out: dict[str, str] = {}
    for item in env:
        name = item["name"]
        if "value" in item:
            out[name] = str(item["value"])
            continue
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref:
            sref = ref["secretKeyRef"]
            if existing and sref["name"] == existing:
                data: dict[str, str] | None = fake_by_key
            else:
                data = secret_values(rendered, sref["name"])
                assert data is not None, f"{name} refers to Secret {sref['name']}, which the chart did not render"
            if sref["key"] in data:
                out[name] = data[sref["key"]]
            else:
                assert sref.get("optional"), f"{name}: key {sref['key']} missing in Secret {sref['name']}"
        elif "configMapKeyRef" in ref:
            cref = ref["configMapKeyRef"]
            out[name] = rendered.one("ConfigMap", cref["name"])["data"][cref["key"]]
        elif "fieldRef" in ref:
            out[name] = "fake-" + ref["fieldRef"]["fieldPath"]
        else:
            raise AssertionError(f"unsupported env source for {name}: {ref}")
    return out


def mounted_files(rendered: Rendered, pod: Mapping[str, Any], ctr: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(absolute path in the container, content) of every ConfigMap file mounted into the container."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for mount in ctr.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        data = rendered.one("ConfigMap", volume["configMap"]["name"])["data"]
        items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            yield str(PurePosixPath(mount["mountPath"]) / item["path"]), data[item["key"]]


@dataclass(frozen=True)
class CheckConfigRun:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]
    env: dict[str, str]


def sidecar_binary() -> str:
    candidate = Path(sys.executable).with_name("mcp-auth-sidecar")
    return str(candidate) if candidate.exists() else str(REPO / ".venv" / "bin" / "mcp-auth-sidecar")


def run_check_config(
    rendered: Rendered,
    pod: Mapping[str, Any],
    ctr: Mapping[str, Any],
    sidecar_values: Mapping[str, Any],
    workdir: Path,
    *,
    print_effective: bool = True,
) -> CheckConfigRun:
    """Run the real check-config with the container's own arguments, env and mounted files."""
    root = workdir / "fs"
    path_map: dict[str, str] = {}
    for path, content in mounted_files(rendered, pod, ctr):
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content, encoding="utf-8")
        path_map[path] = str(local)

    command = list(ctr.get("command") or [])
    args = list(ctr.get("args") or [])
    assert command == ["mcp-auth-sidecar"], command
    assert args[:1] == ["serve"], args
    # serve's own flags that check-config understands too; anything else would be dropped silently.
    rest = args[1:]
    check_args: list[str] = []
    while rest:
        flag = rest.pop(0)
        assert flag == "--config", f"serve flag {flag} has no check-config equivalent: extend the test"
        value = rest.pop(0)
        check_args += [flag, path_map.get(value, value)]

    env = resolve_env(rendered, sidecar_values, ctr.get("env", []))
    if "MCP_SIDECAR_CONFIG" in env:
        env["MCP_SIDECAR_CONFIG"] = path_map.get(env["MCP_SIDECAR_CONFIG"], env["MCP_SIDECAR_CONFIG"])
    proc_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8", **env}
    argv = [sidecar_binary(), "check-config", *check_args, *(["--print"] if print_effective else [])]
    proc = subprocess.run(argv, env=proc_env, capture_output=True, text=True, timeout=60, check=False)
    return CheckConfigRun(proc.returncode, proc.stdout, proc.stderr, argv, env)
