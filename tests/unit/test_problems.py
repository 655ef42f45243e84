"""Issue 14: one problem model for the proxied path and the OAuth endpoints."""

from __future__ import annotations

import inspect
import json

import pytest

from sidecar import challenge, problems
from sidecar.oauth import errors
from sidecar.problems import REASONS, Problem, Unavailable
from sidecar.tokens import time_problem


def _classes() -> list[type[Problem]]:
    found: list[type[Problem]] = []
    for module in (challenge, errors, problems):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception) and obj.__module__.startswith("sidecar"):
                found.append(obj)
    return found


def test_every_error_of_both_surfaces_is_one_kind_of_problem() -> None:
    classes = _classes()
    assert len(classes) > 15
    for cls in classes:
        assert issubclass(cls, Problem), cls
        assert cls.reason in REASONS, (cls, cls.reason)


def test_one_503_for_both_surfaces() -> None:
    assert challenge.ServiceUnavailable is errors.TemporarilyUnavailable is Unavailable
    resp = Unavailable("the store is down", retry_after=7).response()
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["Cache-Control"] == "no-store"
    assert json.loads(resp.body) == {"error": "temporarily_unavailable", "error_description": "the store is down"}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("problem", "status", "error", "challenge_header"),
    [
        (challenge.MissingToken("no token"), 401, "invalid_request", 'Bearer resource_metadata="https://rm"'),
        (challenge.InvalidToken("bad", reason="expired"), 401, "invalid_token", "Bearer error=\"invalid_token\""),
        (challenge.InsufficientScope("more", scope=["a", "b"]), 403, "insufficient_scope", 'scope="a b"'),
        (errors.InvalidClient("who"), 401, "invalid_client", 'Basic realm="mcp-auth-sidecar"'),
        (errors.InvalidGrant("gone"), 400, "invalid_grant", None),
        (challenge.BadGateway("down"), 502, "bad_gateway", None),
    ],
)
def test_problems_render_themselves(problem: Problem, status: int, error: str, challenge_header: str | None) -> None:
    resp = problem.response("https://rm")
    assert resp.status == status
    assert json.loads(resp.body)["error"] == error  # type: ignore[arg-type]
    if challenge_header is None:
        assert "WWW-Authenticate" not in resp.headers
    else:
        assert challenge_header in resp.headers["WWW-Authenticate"]


def test_time_reasons_are_typed_not_read_from_messages() -> None:
    expired = time_problem(100.0, None, 200.0, 0)
    early = time_problem(None, 300.0, 200.0, 0)
    assert expired is not None and expired.reason == "expired"
    assert early is not None and early.reason == "not_yet_valid"


def test_descriptions_are_sanitized_once_at_construction() -> None:
    problem = errors.InvalidRequest("bad\r\nSet-Cookie: x=1" + "y" * 1000)
    assert "\r" not in problem.description and "\n" not in problem.description
    assert len(problem.description.encode()) <= 300
