"""Prometheus metrics (DESIGN §11), served on their own port (``metrics_listen``) at ``/metrics``.

Every metric is created once per process on a private registry; label children are bound once and reused,
so the request path pays a dictionary lookup and an atomic add, nothing more. With ``workers > 1`` the
workers write to ``PROMETHEUS_MULTIPROC_DIR`` and the supervising process serves the merged view.
"""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """All of the sidecar's metrics. One instance per process, held in the app (no module globals)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mcp_sidecar_requests_total", "Requests answered, by HTTP status.", ["status"], registry=r
        )
        self.latency = Histogram(
            "mcp_sidecar_request_duration_seconds",
            "Time from request to response headers (streams: to the first byte).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_rejections = Counter(
            "mcp_sidecar_auth_rejections_total", "Requests refused by the bearer check, by reason.", ["reason"],
            registry=r,
        )
        self.upstream_refreshes = Counter(
            "mcp_sidecar_upstream_refreshes_total", "Upstream IdP refresh attempts, by outcome.", ["outcome"],
            registry=r,
        )
        self.upstream_logins = Counter(
            "mcp_sidecar_upstream_logins_total",
            "Completed upstream logins, by whether the IdP issued a refresh token (refresh_token=yes|no); "
            "a login without one ends when the IdP's access token expires.",
            ["refresh_token"],
            registry=r,
        )
        self.lock_waits = Counter(
            "mcp_sidecar_refresh_lock_waits_total", "Requests that waited for another refresh to finish.",
            registry=r,
        )
        self.store_errors = Counter(
            "mcp_sidecar_store_errors_total", "Store operations that failed, by operation.", ["operation"],
            registry=r,
        )
        self.replica_ack_timeouts = Counter(
            "mcp_sidecar_store_replica_ack_timeouts_total",
            "Rotated tokens written to Redis that no replica acknowledged in time (WAIT; the request went on).",
            registry=r,
        )
        self.backend_errors = Counter(
            "mcp_sidecar_backend_errors_total", "Backend failures, by kind.", ["kind"], registry=r
        )
        self.open_streams = Gauge(
            "mcp_sidecar_open_streams", "Responses currently streaming (SSE and other unsized bodies).",
            registry=r, multiprocess_mode="livesum",
        )
        self.backend_connections = Gauge(
            "mcp_sidecar_backend_connections",
            "Connections to the MCP server: open (busy or idle), and requests waiting for one "
            "(at backend_max_connections).",
            ["state"], registry=r, multiprocess_mode="livesum",
        )
        # OAuth (broker mode), each by outcome: "ok"-like words for success, else the RFC 6749 error code.
        self.oauth_registrations = Counter(
            "mcp_sidecar_oauth_registrations_total", "Dynamic client registrations, by outcome.", ["outcome"],
            registry=r,
        )
        self.oauth_consents = Counter(
            "mcp_sidecar_oauth_consents_total", "Consent decisions posted, by outcome.", ["outcome"], registry=r
        )
        self.oauth_logins = Counter(
            "mcp_sidecar_oauth_logins_total", "Upstream logins returning to the callback, by outcome.", ["outcome"],
            registry=r,
        )
        self.oauth_token_grants = Counter(
            "mcp_sidecar_oauth_token_grants_total", "Token endpoint requests, by grant type and outcome.",
            ["grant_type", "outcome"], registry=r,
        )
        self.oauth_refresh_reuse = Counter(
            "mcp_sidecar_oauth_refresh_reuse_total",
            "Rotated refresh tokens presented again: replayed (within the grace) or revoked (theft).", ["outcome"],
            registry=r,
        )
        self.rate_limited = Counter(
            "mcp_sidecar_rate_limited_total", "Requests answered 429 by the OAuth rate limit, by endpoint.",
            ["endpoint"], registry=r,
        )
        self.tool_calls = Counter(
            "mcp_sidecar_tool_calls_total",
            "tools/call messages judged by tool_policy, by tool (bounded; overflow is 'other') and decision.",
            ["tool", "decision"], registry=r,
        )
        self.audit_dropped = Counter(
            "mcp_sidecar_audit_dropped_total", "Audit events dropped because the writer fell behind.", registry=r
        )
        self._status_children: dict[int, Counter] = {}
        self._reason_children: dict[str, Counter] = {}

    def count_status(self, status: int) -> None:
        child = self._status_children.get(status)
        if child is None:
            child = self._status_children[status] = self.requests.labels(str(status))
        child.inc()

    def count_rejection(self, reason: str) -> None:
        child = self._reason_children.get(reason)
        if child is None:
            child = self._reason_children[reason] = self.auth_rejections.labels(reason)
        child.inc()


def exposition_registry(local: CollectorRegistry) -> CollectorRegistry:
    """The registry to expose: the merged multi-process view when workers share one, else the local one."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return local
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
    return merged


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
