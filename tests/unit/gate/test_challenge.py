"""Rendering of the Bearer challenge and the JSON error bodies (DESIGN §4, RFC 6750 §3, RFC 9728 §5.1)."""

from __future__ import annotations

import json
import re

import pytest

from sidecar.challenge import (
    BadGateway,
    GatewayTimeout,
    HeaderTooLarge,
    InsufficientScope,
    InvalidToken,
    MissingToken,
    ServiceUnavailable,
    bearer_challenge,
    json_body,
    sanitize,
)

RM = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"

# RFC 9110 §11.2 auth-param with quoted-string values, as RFC 6750 uses them.
_PARAM = re.compile(r'([A-Za-z_]+)="((?:[^"\\]|\\.)*)"')


def params(challenge: str) -> dict[str, str]:
    assert challenge.startswith("Bearer ")
    rest = challenge[len("Bearer ") :]
    found = _PARAM.findall(rest)
    # Nothing but well-formed params separated by ", ".
    assert ", ".join(f'{k}="{v}"' for k, v in found) == rest
    return dict(found)


def test_no_error_param_when_no_token() -> None:
    value = bearer_challenge(resource_metadata=RM)
    assert value == f'Bearer resource_metadata="{RM}"'
    assert "error" not in params(value)


def test_missing_token_response_has_no_error_in_challenge() -> None:
    resp = MissingToken("no Authorization header").response(RM)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{RM}"'
    assert resp.headers["Cache-Control"] == "no-store"


def test_invalid_token_with_description() -> None:
    resp = InvalidToken("the access token expired").response(RM)
    assert resp.status == 401
    p = params(resp.headers["WWW-Authenticate"])
    assert p == {
        "error": "invalid_token",
        "error_description": "the access token expired",
        "resource_metadata": RM,
    }
    assert resp.content_type == "application/json"
    assert json.loads(resp.body) == {"error": "invalid_token", "error_description": "the access token expired"}


def test_insufficient_scope_carries_scope() -> None:
    resp = InsufficientScope("the token lacks a required scope", scope=["mcp:read", "mcp:write"]).response(RM)
    assert resp.status == 403
    p = params(resp.headers["WWW-Authenticate"])
    assert p["error"] == "insufficient_scope"
    assert p["scope"] == "mcp:read mcp:write"
    assert p["resource_metadata"] == RM


def test_scope_param_also_on_invalid_token_when_given() -> None:
    value = bearer_challenge(resource_metadata=RM, error="invalid_token", description="x", scope=["a", "b"])
    assert params(value)["scope"] == "a b"


def test_no_scope_param_without_scopes() -> None:
    assert "scope" not in params(bearer_challenge(resource_metadata=RM, error="invalid_token", description="x"))


@pytest.mark.parametrize(
    "hostile",
    [
        'a"b',
        'evil", error="none',
        "back\\slash",
        "line\r\nSet-Cookie: x=1",
        "nul\x00byte",
        "tab\tand\x7fdel",
        "ünïcödé ☃ 漢字",
        "\u2028\u2029\u200b",
        "x" * 1000,
        '"' * 50 + "\\" * 50,
    ],
)
def test_hostile_descriptions_cannot_break_the_challenge(hostile: str) -> None:
    value = bearer_challenge(resource_metadata=RM, error="invalid_token", description=hostile)
    assert all(0x20 <= ord(ch) <= 0x7E for ch in value), "only printable ASCII in a header value"
    p = params(value)
    assert set(p) == {"error", "error_description", "resource_metadata"}
    assert p["error"] == "invalid_token"
    assert p["resource_metadata"] == RM
    desc = p["error_description"]
    # RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E: no quote, no backslash.
    assert '"' not in desc and "\\" not in desc
    assert len(desc.encode()) <= 120


def test_hostile_description_in_a_response_is_a_valid_header() -> None:
    resp = InvalidToken('bad "token"\r\nX-Injected: 1').response(RM)
    header = resp.headers["WWW-Authenticate"]
    assert "\r" not in header and "\n" not in header
    assert params(header)["error_description"].startswith("bad 'token'")
    body = json.loads(resp.body)
    assert "\r" not in body["error_description"] and "\n" not in body["error_description"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\x00b\x1fc\x7fd", "abcd"),
        ("line\nbreak", "linebreak"),
        ("é" * 100, "é" * 60),  # 2 bytes each: cut at 120 bytes, never mid-character
    ],
)
def test_sanitize(text: str, expected: str) -> None:
    assert sanitize(text) == expected


def test_sanitize_never_exceeds_the_byte_limit() -> None:
    for text in ["a" * 500, "€" * 100, "a" + "€" * 100]:
        assert len(sanitize(text).encode()) <= 120


def test_json_body_shape() -> None:
    assert json.loads(json_body("bad_gateway", "down")) == {"error": "bad_gateway", "error_description": "down"}


@pytest.mark.parametrize(
    ("problem", "status", "error"),
    [
        (BadGateway("down"), 502, "bad_gateway"),
        (GatewayTimeout("slow"), 504, "gateway_timeout"),
        (HeaderTooLarge("big"), 431, "invalid_request"),
        (ServiceUnavailable("jwks down", retry_after=10), 503, "temporarily_unavailable"),
    ],
)
def test_sidecar_answers_are_json(problem: object, status: int, error: str) -> None:
    resp = problem.response(RM)  # type: ignore[attr-defined]
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert json.loads(resp.body)["error"] == error
    assert "WWW-Authenticate" not in resp.headers


def test_service_unavailable_has_retry_after() -> None:
    assert ServiceUnavailable("x", retry_after=10).response(RM).headers["Retry-After"] == "10"
