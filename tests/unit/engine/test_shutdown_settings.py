"""The graceful-stop settings: accepted in their ranges, refused outside them with the key named, and the grace
period a supervisor (and the chart's terminationGracePeriodSeconds) must allow is their sum plus the stream end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigError, load_settings
from sidecar.server import STREAM_END_GRACE_SECONDS, grace_period_seconds

BASE = {"MCP_SIDECAR_UPSTREAM": "http://127.0.0.1:8000", "MCP_SIDECAR_PUBLIC_URL": "https://mcp.example.com"}


@settings(max_examples=40, deadline=None)
@given(delay=st.floats(0, 600), timeout=st.floats(0, 3600))
def test_grace_period_is_the_sum(delay: float, timeout: float) -> None:
    env = {**BASE, "MCP_SIDECAR_SHUTDOWN_DELAY_SECONDS": repr(delay),
           "MCP_SIDECAR_SHUTDOWN_TIMEOUT_SECONDS": repr(timeout)}  # fmt: skip
    s = load_settings(None, env, {})
    assert grace_period_seconds(s) == pytest.approx(delay + timeout + STREAM_END_GRACE_SECONDS)


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["SHUTDOWN_DELAY_SECONDS", "SHUTDOWN_TIMEOUT_SECONDS", "IDP_MAX_CONCURRENCY",
                            "REDIS_MIN_REPLICA_ACKS"]),
       value=st.one_of(st.integers(max_value=-1), st.integers(min_value=5000), st.just("soon")))  # fmt: skip
def test_out_of_range_values_are_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {**BASE, "MCP_SIDECAR_" + key: str(value)}, {})
    assert [p.key for p in err.value.problems] == [key.lower()]


def test_defaults() -> None:
    s = load_settings(None, BASE, {})
    assert (s.shutdown_delay_seconds, s.shutdown_timeout_seconds, s.idp_max_concurrency) == (5, 25, 16)
    assert grace_period_seconds(s) == 32
