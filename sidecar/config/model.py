"""The settings model: one flat set of ``snake_case`` keys (the operator contract), their types and defaults
(pydantic), the derived values, and how a value is shown with secrets masked.

Where the values come from (flag > env > YAML > default) is :mod:`sidecar.config.loading`; relations between
keys that pydantic does not know are :mod:`sidecar.config.checks`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from yarl import URL

# Keys whose values must never be printed (logs, check-config output, reprs).
SECRET_KEYS = frozenset({"idp_client_secret", "redis_password", "encryption_keys"})


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


def shown(key: str, value: Any) -> str:
    """A value as check-config and errors print it: secrets (and a Redis URL with credentials) masked,
    long values cut."""
    if key in SECRET_KEYS or (key == "redis_url" and isinstance(value, str) and "@" in value):
        return "'***'"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


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
