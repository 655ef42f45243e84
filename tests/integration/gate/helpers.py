"""Constants and small helpers shared by the gate's integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from sidecar.app import METRICS
from sidecar.metrics import Metrics
from sidecar.server import RUNNER_OPTIONS

# sidecar.server's parser limits (handler_cancellation=True is aiohttp TestServer's default, as in production).
RUNNER: dict[str, Any] = dict(RUNNER_OPTIONS)
PUBLIC = "https://mcp.example.com"

SidecarFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


def metrics_of(client: TestClient[Any, Any]) -> Metrics:
    app = client.app
    assert app is not None
    return app[METRICS]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of one metric sample (0 when it was never touched)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
