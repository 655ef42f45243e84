"""The semantic checks of ``check-config``: relations between keys and formats pydantic does not know
(host:port, URLs, key rings, header templates, tool policies), every problem at once."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yarl import URL

from sidecar.config.model import Settings, shown

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
TEMPLATE_ROOTS = ("upstream.access_token", "upstream.id_token", "client_id", "scopes", "subject")


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
        out.append(Problem(key, message, shown(key, value) if value is not None else None, src.get(key)))

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
