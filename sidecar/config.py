"""Configuration: one flat set of ``snake_case`` keys from four layers.

Precedence is flag over environment (``MCP_SIDECAR_<KEY>``) over YAML file over default. Every problem in
every layer is collected and reported at once, each with its key, the offending value (secrets masked) and
what to do, so that ``check-config`` and ``serve`` refuse a bad deployment before a port opens.

Why pydantic plus a small layering function rather than ``pydantic-settings`` sources: the contract asks for
comma-separated *or* JSON lists in the environment, unknown-key detection in the file with suggestions, and
one error list across all layers with the layer named; pydantic-settings' env source decodes complex values
as JSON only and stops at the first bad layer. Validation itself is pydantic's.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from yarl import URL

ENV_PREFIX = "MCP_SIDECAR_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# Keys whose values must never be printed (logs, check-config output, reprs).
SECRET_KEYS = frozenset({"idp_client_secret", "redis_password", "encryption_keys"})

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
TEMPLATE_ROOTS = ("upstream.access_token", "upstream.id_token", "client_id", "scopes", "subject")


class Settings(BaseModel):
    """Every setting of the sidecar. Field names are the operator contract: keep them stable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- serving (issue: foundation) ---
    mode: Literal["gate", "broker"] = "gate"
    listen: str = "0.0.0.0:8080"
    metrics_listen: str = "0.0.0.0:9090"
    workers: int = Field(1, ge=1, le=64)
    upstream: str | None = None
    public_url: str | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_delay_seconds: float = Field(5, ge=0, le=600)
    shutdown_timeout_seconds: float = Field(25, ge=0, le=3600)

    # --- gate: bearer checks ---
    authorization_servers: list[str] = Field(default_factory=list)
    leeway_seconds: float = Field(60, ge=0, le=3600)
    opaque_tokens: Literal["pass", "reject"] = "pass"
    forward_client_token: bool | None = None  # default: true in gate, false in broker
    jwks_url: str | None = None
    issuer: str | None = None
    audience: list[str] = Field(default_factory=list)
    required_scopes: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(default_factory=list)
    backend_connect_timeout_seconds: float = Field(5, gt=0, le=600)
    backend_timeout_seconds: float = Field(30, gt=0, le=86400)
    backend_max_connections: int = Field(100, ge=1, le=100000)
    request_header_timeout_seconds: float = Field(10, gt=0, le=3600)
    token_cache_seconds: float = Field(2, ge=0, le=60)

    # --- broker engine: store, secrets, refresh, injection ---
    store: Literal["memory", "redis"] = "memory"
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    redis_url: SecretStr | None = None
    redis_sentinels: list[str] = Field(default_factory=list)
    redis_sentinel_master: str | None = None
    redis_cluster_nodes: list[str] = Field(default_factory=list)
    redis_password: SecretStr | None = None
    redis_tls: bool = False
    redis_timeout_seconds: float = Field(2, gt=0, le=60)
    redis_min_replica_acks: int | None = Field(None, ge=0, le=16)  # default: 1 with Sentinel/Cluster, else 0
    key_prefix: str = Field("mcpsc", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    record_grace_seconds: int = Field(86400, ge=0)
    encryption_keys: SecretStr | None = None
    refresh_skew_seconds: float = Field(60, ge=0, le=3600)
    idp_timeout_seconds: float = Field(10, gt=0, le=300)
    refresh_lock_seconds: float = Field(15, gt=0, le=600)
    idp_max_concurrency: int = Field(16, ge=1, le=4096)
    inject_headers: dict[str, str] | None = None  # default depends on mode

    # --- broker front door: OAuth authorization server ---
    idp_issuer: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: SecretStr | None = None
    idp_token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    idp_scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    idp_provider: Literal["auto", "google", "entra", "okta", "auth0", "keycloak", "generic"] = "auto"
    force_consent: bool | None = None  # default: the provider profile decides (providers.py)
    idp_userinfo_claims: bool = False
    display_name: str | None = Field(None, max_length=100)
    scope_descriptions: dict[str, str] = Field(default_factory=dict)
    client_token: Literal["opaque", "id_token"] = "opaque"
    id_token_refresh_threshold_seconds: int = Field(3300, ge=0)
    access_token_ttl_seconds: int = Field(3600, ge=1)
    refresh_token_ttl_seconds: int = Field(2592000, ge=1)
    refresh_replay_grace_seconds: int = Field(30, ge=0, le=600)
    cimd_allow_private_addresses: bool = False
    rate_limit_per_minute: int = Field(60, ge=0)
    request_body_timeout_seconds: float = Field(10, gt=0, le=300)
    max_registered_clients: int = Field(100_000, ge=1)

    # --- access control and audit (issue 15) ---
    tool_policy: list[Any] = Field(default_factory=list)  # rules; compiled and checked by sidecar.policy
    tool_policy_default: Literal["allow", "deny"] = "allow"
    hide_denied_tools: bool = False
    audit_log: str = "off"  # off | stdout | <path>
    audit_arguments: Literal["off", "hash"] = "off"

    @field_validator(
        "authorization_servers",
        "audience",
        "required_scopes",
        "allowed_origins",
        "trusted_proxies",
        "redis_sentinels",
        "redis_cluster_nodes",
        "idp_scopes",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return parse_list(value)

    @field_validator("audit_log", "audit_arguments", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; the contract spells the setting `audit_log: off`.
        return "off" if value is False else value

    @field_validator("tool_policy", mode="before")
    @classmethod
    def _parse_policy(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON array of rules ({exc.msg})") from exc
        return [] if value is None else value

    @field_validator("inject_headers", "scope_descriptions", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object of names to strings ({exc.msg})") from exc
        return value

    # --- derived values (pure, cheap) ---
    @property
    def forward_client_token_effective(self) -> bool:
        if self.forward_client_token is None:
            return self.mode == "gate"
        return self.forward_client_token

    @property
    def redis_min_replica_acks_effective(self) -> int:
        """Replicas that must acknowledge a rotated upstream token before the refresh returns (Redis ``WAIT``):
        1 where the deployment has replicas to fail over to (Sentinel, Cluster), 0 for a standalone server."""
        if self.redis_min_replica_acks is not None:
            return self.redis_min_replica_acks
        return 0 if self.redis_mode == "standalone" else 1

    @property
    def public(self) -> URL:
        assert self.public_url is not None
        return URL(self.public_url.rstrip("/") or self.public_url)

    @property
    def upstream_url(self) -> URL:
        assert self.upstream is not None
        return URL(self.upstream)


def parse_list(value: Any) -> Any:
    """Lists arrive as YAML lists, JSON arrays (``["a","b"]``) or comma-separated strings (``a,b``)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"looks like a JSON array but does not parse ({exc.msg})") from exc
            return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


FIELDS: tuple[str, ...] = tuple(Settings.model_fields)


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem: which key, what value, and what to do about it."""

    key: str
    message: str
    value: str | None = None
    source: str | None = None

    def render(self) -> str:
        where = f" (from {self.source})" if self.source else ""
        shown = f" = {self.value}" if self.value is not None else ""
        return f"{self.key}{shown}{where}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found, never just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(p.render() for p in problems))
        self.problems = problems


def _show(key: str, value: Any) -> str:
    if key in SECRET_KEYS or (key == "redis_url" and isinstance(value, str) and "@" in value):
        return "'***'"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else "; see the configuration reference in README.md"


def read_file_layer(path: str) -> tuple[dict[str, Any], list[Problem]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return {}, [Problem("config", f"cannot read the config file: {exc.strerror or exc}", repr(path))]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return {}, [Problem("config", f"the file is not valid YAML{where}", repr(path))]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [Problem("config", "the file must be a YAML mapping of setting keys to values", repr(path))]
    problems: list[Problem] = []
    layer: dict[str, Any] = {}
    for key, value in data.items():
        skey = str(key)
        if skey not in FIELDS:
            problems.append(Problem(skey, "unknown setting" + _suggest(skey), source=path))
            continue
        layer[skey] = value
    return layer, problems


def read_env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], list[Problem]]:
    layer: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in FIELDS:
            problems.append(Problem(key, f"unknown setting in environment variable {name}" + _suggest(key)))
            continue
        layer[key] = value
    return layer, problems


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the layers and validate. Raises :class:`ConfigError` listing every problem."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(CONFIG_ENV) or None
    sources: dict[str, str] = {}
    merged: dict[str, Any] = {}
    problems: list[Problem] = []
    if config_file:
        file_layer, file_problems = read_file_layer(config_file)
        problems += file_problems
        merged.update(file_layer)
        sources.update(dict.fromkeys(file_layer, config_file))
    env_layer, env_problems = read_env_layer(env)
    problems += env_problems
    merged.update(env_layer)
    sources.update({k: f"{ENV_PREFIX}{k.upper()}" for k in env_layer})
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key] = value
            sources[key] = "command line"

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        bad: set[str] = set()
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "config"
            bad.add(key)
            problems.append(
                Problem(
                    key,
                    _pydantic_message(err),
                    _show(key, merged.get(key)) if key in merged else None,
                    sources.get(key),
                )
            )
        # A type error must not hide the other problems: check the relations among the keys that did parse.
        try:
            partial = Settings.model_validate({k: v for k, v in merged.items() if k not in bad})
        except ValidationError:
            partial = None
        if partial is not None:
            problems += [p for p in semantic_problems(partial, sources) if p.key not in bad]
    if settings is not None:
        problems += semantic_problems(settings, sources)
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def _pydantic_message(err: Any) -> str:
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"must be one of {expected}"
    if err.get("type") == "extra_forbidden":
        return "unknown setting"
    return msg[0].lower() + msg[1:] if msg else msg


# --- semantic checks: relations between keys, formats pydantic does not know ---


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces). Raises ValueError with a reason."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT, for example 0.0.0.0:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 0 to 65535")
    return host or "0.0.0.0", int(port_text)


def _check_http_url(key: str, text: str | None, *, required: bool, allow_path: bool = True) -> list[Problem]:
    if text is None or text == "":
        if required:
            return [Problem(key, "is required: " + _REQUIRED_HINTS.get(key, "set it"))]
        return []
    try:
        url = URL(text)
    except (ValueError, TypeError):
        return [Problem(key, "is not a valid URL", repr(text))]
    if url.scheme not in ("http", "https") or not url.host:
        return [Problem(key, "must be an absolute http:// or https:// URL", repr(text))]
    if url.query_string or url.fragment:
        return [Problem(key, "must not carry a query or a fragment", repr(text))]
    if not allow_path and url.path not in ("", "/"):
        return [Problem(key, "must be an origin (scheme://host[:port]) without a path", repr(text))]
    return []


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

_REQUIRED_HINTS = {
    "upstream": "the MCP server's base URL, usually http://127.0.0.1:<port> (--upstream or MCP_SIDECAR_UPSTREAM)",
    "public_url": "the external base URL clients use, for example https://mcp.example.com "
    "(--public-url or MCP_SIDECAR_PUBLIC_URL)",
    "idp_issuer": "the upstream OIDC issuer URL, needed in broker mode",
    "idp_client_id": "the sidecar's own client id at the IdP, needed in broker mode",
    "idp_client_secret": "the sidecar's own client secret at the IdP, needed in broker mode",
}


def parse_key_ring(text: str) -> list[tuple[str, bytes]]:
    """``kid:base64key,kid2:base64key``: each key 32 bytes (AES-256). Raises ValueError with a reason."""
    ring: list[tuple[str, bytes]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kid, sep, b64 = part.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", kid):
            raise ValueError("each entry must be KID:BASE64KEY with a short alphanumeric key id")
        try:
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"key '{kid}' is not valid base64") from exc
        if len(raw) != 32:
            raise ValueError(f"key '{kid}' must decode to 32 bytes (AES-256), not {len(raw)}")
        if any(k == kid for k, _ in ring):
            raise ValueError(f"key id '{kid}' appears twice")
        ring.append((kid, raw))
    if not ring:
        raise ValueError("the key ring is empty")
    return ring


def semantic_problems(s: Settings, sources: Mapping[str, str] | None = None) -> list[Problem]:
    src = sources or {}
    out: list[Problem] = []

    def add(key: str, message: str, value: Any = None) -> None:
        out.append(Problem(key, message, _show(key, value) if value is not None else None, src.get(key)))

    for key in ("listen", "metrics_listen"):
        try:
            parse_host_port(getattr(s, key))
        except ValueError as exc:
            add(key, str(exc), getattr(s, key))
    out += _check_http_url("upstream", s.upstream, required=True)
    out += _check_http_url("public_url", s.public_url, required=True)
    for origin in s.allowed_origins:
        if origin != "*":
            out += _check_http_url("allowed_origins", origin, required=False, allow_path=False)
        else:
            add("allowed_origins", "'*' is not allowed: list the browser origins explicitly", origin)
    for cidr in s.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            add("trusted_proxies", "each entry must be an IP address or CIDR block, e.g. 10.0.0.0/8", cidr)
    for server in s.authorization_servers:
        out += _check_http_url("authorization_servers", server, required=False)
    out += _check_http_url("jwks_url", s.jwks_url, required=False)

    if s.opaque_tokens == "pass" and not s.forward_client_token_effective and s.mode == "gate":
        add(
            "opaque_tokens",
            "'pass' lets unvalidated opaque tokens through, which is only safe when the backend sees and "
            "checks them: set opaque_tokens: reject, or forward_client_token: true",
            s.opaque_tokens,
        )
    if (s.issuer or s.audience) and not s.jwks_url:
        add(
            "issuer" if s.issuer else "audience",
            "issuer and audience are checked only together with a signature: set jwks_url as well",
        )
    if s.refresh_lock_seconds <= s.idp_timeout_seconds:
        add(
            "refresh_lock_seconds",
            f"must be longer than idp_timeout_seconds ({s.idp_timeout_seconds:g}), or a second replica "
            "could refresh while the first still waits on the IdP",
            s.refresh_lock_seconds,
        )
    if s.encryption_keys is not None:
        try:
            parse_key_ring(s.encryption_keys.get_secret_value())
        except ValueError as exc:
            add("encryption_keys", f"{exc}; generate one with 'mcp-auth-sidecar keygen'", "***")

    if s.store == "redis":
        if s.redis_mode == "standalone":
            if s.redis_url is None:
                add("redis_url", "is required with store: redis and redis_mode: standalone (redis://host:6379/0)")
            else:
                url_text = s.redis_url.get_secret_value()
                try:
                    scheme = URL(url_text).scheme
                except ValueError:
                    scheme = ""
                if scheme not in ("redis", "rediss", "unix"):
                    add("redis_url", "must start with redis://, rediss:// or unix://", "'***'")
        elif s.redis_mode == "sentinel":
            if not s.redis_sentinels:
                add("redis_sentinels", "is required with redis_mode: sentinel (host:port list)")
            if not s.redis_sentinel_master:
                add("redis_sentinel_master", "is required with redis_mode: sentinel (the master's name)")
        elif not s.redis_cluster_nodes:
            add("redis_cluster_nodes", "is required with redis_mode: cluster (host:port list of seed nodes)")
        for key in ("redis_sentinels", "redis_cluster_nodes"):
            for node in getattr(s, key):
                try:
                    parse_host_port(node)
                except ValueError as exc:
                    add(key, str(exc), node)

    if s.inject_headers is not None:
        if s.mode == "gate" and any("{upstream." in t for t in s.inject_headers.values() if isinstance(t, str)):
            add("inject_headers", "{upstream.*} values exist only in broker mode; in gate mode use {claims.<name>}")
        for message in header_template_problems(s.inject_headers):
            out.append(Problem("inject_headers", message, None, src.get("inject_headers")))

    out += _access_problems(s, src)

    if s.mode == "broker":
        for key in ("idp_issuer", "idp_client_id", "idp_client_secret"):
            if getattr(s, key) in (None, ""):
                add(key, "is required: " + _REQUIRED_HINTS[key])
        out += _check_http_url("idp_issuer", s.idp_issuer, required=False)
        if s.public_url and not _check_http_url("public_url", s.public_url, required=True):
            public = URL(s.public_url)
            if public.scheme == "http" and public.host not in _LOOPBACK_HOSTS:
                add(
                    "public_url",
                    "broker mode needs https (browsers drop the Secure consent cookie over plain http anywhere "
                    "but on loopback, so no login could finish)",
                    s.public_url,
                )
        if s.store == "redis" and s.encryption_keys is None:
            add(
                "encryption_keys",
                "is required in broker mode with store: redis (upstream tokens are stored encrypted); "
                "generate one with 'mcp-auth-sidecar keygen'",
            )
        if s.store == "memory" and s.workers > 1:
            add("workers", "store: memory lives in one process: use store: redis with more than one worker", s.workers)
    return out


def _access_problems(s: Settings, src: Mapping[str, str]) -> list[Problem]:
    """tool_policy (every problem of every rule at once) and audit_log (issue 15)."""
    from sidecar.policy import compile_policy  # the CEL runtime loads only when a rule has a condition

    out = [Problem("tool_policy", p, None, src.get("tool_policy")) for p in compile_policy(s.tool_policy)[1]]
    target = s.audit_log
    if target not in ("off", "stdout"):
        parent = Path(target).parent
        if not target.strip() or target.endswith("/"):
            out.append(Problem("audit_log", "must be off, stdout or the path of a file", repr(target)))
        elif not parent.is_dir():
            out.append(Problem("audit_log", f"the directory {str(parent)!r} does not exist", repr(target),
                               src.get("audit_log")))
        elif not os.access(parent, os.W_OK) and not os.access(target, os.W_OK):
            out.append(Problem("audit_log", "the file cannot be written by this user", repr(target),
                               src.get("audit_log")))
    return out


def header_template_problems(headers: Mapping[str, str]) -> list[str]:
    problems: list[str] = []
    for name, template in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            problems.append(f"header name {name!r} is not a valid HTTP header name")
            continue
        if not isinstance(template, str):
            problems.append(f"{name}: the template must be a string")
            continue
        if "\r" in template or "\n" in template:
            problems.append(f"{name}: the template must not contain CR or LF")
        for field in _TEMPLATE_FIELD.findall(template):
            if field not in TEMPLATE_ROOTS and not re.fullmatch(r"claims\.[A-Za-z0-9_\-.]+", field):
                problems.append(
                    f"{name}: unknown placeholder {{{field}}}; use one of "
                    + ", ".join("{" + r + "}" for r in TEMPLATE_ROOTS)
                    + " or {claims.<name>}"
                )
    return problems


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings, secrets masked: safe to log or print."""
    out: dict[str, Any] = {}
    for key in FIELDS:
        value = getattr(settings, key)
        if isinstance(value, SecretStr):
            out[key] = "***"
        else:
            out[key] = value
    out["forward_client_token"] = settings.forward_client_token_effective
    out["redis_min_replica_acks"] = settings.redis_min_replica_acks_effective
    return out
