"""The gate's pure token decisions (sidecar.tokens) and the authenticator built on them (DESIGN §2, §4)."""

from __future__ import annotations

import base64
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.auth import GateAuthenticator
from sidecar.challenge import HeaderTooLarge, InsufficientScope, InvalidToken, MissingToken
from sidecar.tokens import (
    MAX_AUTHORIZATION_BYTES,
    BearerProblem,
    Kind,
    inspect,
    missing_scopes,
    parse_authorization,
    scopes_of,
    time_problem,
)
from tests.support.jwt_tokens import b64url, b64url_json, compact, unsigned

NOW = 1_800_000_000.0
LEEWAY = 60.0
HEADER = {"alg": "RS256", "typ": "JWT"}


# --- parse_authorization ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, BearerProblem.MISSING),
        ("Basic dXNlcjpwYXNz", BearerProblem.NOT_BEARER),
        ("Token abc", BearerProblem.NOT_BEARER),
        ("Bearerabc", BearerProblem.NOT_BEARER),
        ("", BearerProblem.NOT_BEARER),
        ("Bearer", BearerProblem.EMPTY),
        ("Bearer    ", BearerProblem.EMPTY),
        ("Bearer abc def", BearerProblem.BAD_SYNTAX),
        ('Bearer abc"def', BearerProblem.BAD_SYNTAX),
        ("Bearer abc,def", BearerProblem.BAD_SYNTAX),
        ("Bearer äbc", BearerProblem.BAD_SYNTAX),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("bEaReR abc", "abc"),
        ("Bearer   abc  ", "abc"),
        ("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g=="),
    ],
)
def test_parse_authorization(value: str | None, expected: object) -> None:
    assert parse_authorization(value) == expected


def test_authorization_size_limit_is_16_kb_inclusive() -> None:
    at_limit = "Bearer " + "a" * (MAX_AUTHORIZATION_BYTES - len("Bearer "))
    assert len(at_limit) == 16 * 1024
    assert parse_authorization(at_limit) == "a" * (MAX_AUTHORIZATION_BYTES - 7)
    assert parse_authorization(at_limit + "a") is BearerProblem.TOO_LARGE


# --- inspect: opaque vs JWT vs malformed ---------------------------------------------------------------


def _raw(header_part: str, payload_part: str, sig: str = "c2ln") -> str:
    return f"{header_part}.{payload_part}.{sig}"


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token-value",
        "a.b",  # two parts
        "a.b.c.d",  # four parts
        "..sig",  # empty parts
        _raw("not*base64", b64url_json({"exp": 1})),  # header not base64url
        _raw(b64url(b"not json"), b64url_json({"exp": 1})),  # header not JSON
        _raw(b64url_json([1, 2]), b64url_json({"exp": 1})),  # header JSON but not an object
        _raw(b64url_json("alg"), b64url_json({"exp": 1})),
        "gho_16C7e42F292c6912E7710c838347Ae178B4a",  # GitHub-style opaque token
        "mcpsc_grant.secret",  # two parts with a dot
    ],
)
def test_tokens_without_jwt_shape_are_opaque(token: str) -> None:
    assert inspect(token).kind is Kind.OPAQUE


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (_raw(b64url_json(HEADER), "payload*not*b64"), "base64url"),
        (_raw(b64url_json(HEADER), b64url_json({"exp": 1}), "sig*bad"), "base64url"),
        (_raw(b64url_json(HEADER), b64url(b"{not json")), "not valid JSON"),
        (_raw(b64url_json(HEADER), b64url(b"\xff\xfe\x00")), "not valid JSON"),
        (_raw(b64url_json(HEADER), b64url_json([1, 2, 3])), "not a JSON object"),
        (_raw(b64url_json(HEADER), b64url_json("claims")), "not a JSON object"),
        (compact(HEADER, {"exp": "1800000000"}), "exp claim is not a number"),
        (compact(HEADER, {"exp": True}), "exp claim is not a number"),
        (compact(HEADER, {"exp": None}), "exp claim is not a number"),
        (compact(HEADER, {"exp": [1]}), "exp claim is not a number"),
        (compact(HEADER, {"exp": {"t": 1}}), "exp claim is not a number"),
        (compact(HEADER, {"nbf": "soon"}), "nbf claim is not a number"),
    ],
)
def test_jwt_shaped_but_unreadable_is_malformed(token: str, problem: str) -> None:
    info = inspect(token)
    assert info.kind is Kind.MALFORMED
    assert problem in (info.problem or "")


def test_padding_in_parts_is_accepted() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256"}').decode()
    payload = base64.urlsafe_b64encode(b'{"exp":1800000000}').decode()
    info = inspect(f"{header}.{payload}.sig")
    assert info.kind is Kind.JWT
    assert info.exp == 1_800_000_000.0


@pytest.mark.parametrize(
    ("claims", "exp", "nbf"),
    [
        ({"exp": 1800000000}, 1800000000.0, None),
        ({"exp": 1800000000.75}, 1800000000.75, None),  # a float exp works
        ({"exp": 0}, 0.0, None),
        ({"sub": "x"}, None, None),  # no exp at all
        ({"exp": 10, "nbf": 5.5}, 10.0, 5.5),
        ({"exp": 1e308}, 1e308, None),
    ],
)
def test_jwt_claims_are_read(claims: dict[str, object], exp: float | None, nbf: float | None) -> None:
    info = inspect(compact(HEADER, claims))
    assert info.kind is Kind.JWT
    assert info.exp == exp
    assert info.nbf == nbf
    assert dict(info.claims) == claims


def test_exp_integer_too_large_for_a_float_is_never_a_crash() -> None:
    # JSON allows integers of any size; float(10**400) raises OverflowError, which must not escape as a 500.
    # Such an exp is still a number (RFC 7519 NumericDate): effectively "never expires", like 1e400.
    for claims in ({"exp": 10**400}, {"nbf": -(10**400)}):
        assert inspect(compact(HEADER, claims)).kind is Kind.JWT
    assert inspect(_raw(b64url_json(HEADER), b64url(b'{"exp": 1e400}'))).exp == math.inf  # valid JSON number
    assert inspect(compact(HEADER, {"exp": 10**400})).exp == math.inf
    assert inspect(compact(HEADER, {"exp": -(10**400)})).exp == -math.inf
    assert time_problem(-math.inf, None, NOW, LEEWAY) is not None


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_exp_that_is_not_a_json_number_is_malformed(literal: bytes) -> None:
    # Python's json module accepts these literals although JSON (RFC 8259 §6) has no such numbers; an exp of NaN
    # compares false with everything, so the token would never expire.
    token = _raw(b64url_json(HEADER), b64url(b'{"exp": ' + literal + b"}"))
    assert inspect(token).kind is Kind.MALFORMED


# --- time_problem: exp / nbf with leeway ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exp", "nbf", "expired"),
    [
        (NOW + 3600, None, False),  # unexpired
        (NOW, None, False),  # expiring right now: within leeway
        (NOW - LEEWAY, None, False),  # exactly at exp + leeway: never reject before exp + leeway
        (NOW - LEEWAY + 0.001, None, False),
        (NOW - LEEWAY - 0.001, None, True),  # just past exp + leeway
        (NOW - 3600, None, True),  # long expired
        (None, None, False),  # no exp: decode-only passes
        (NOW + 10.5, None, False),  # float exp
    ],
)
def test_exp_with_leeway(exp: float | None, nbf: float | None, expired: bool) -> None:
    why = time_problem(exp, nbf, NOW, LEEWAY)
    if expired:
        assert why is not None and why.reason == "expired" and "expired" in why.message
    else:
        assert why is None


@pytest.mark.parametrize(
    ("nbf", "too_early"),
    [
        (NOW - 10, False),
        (NOW + LEEWAY, False),  # exactly at the leeway boundary
        (NOW + LEEWAY - 1, False),  # in the future but within leeway
        (NOW + LEEWAY + 0.001, True),  # beyond leeway
        (NOW + 3600, True),
    ],
)
def test_nbf_with_leeway(nbf: float, too_early: bool) -> None:
    why = time_problem(NOW + 7200, nbf, NOW, LEEWAY)
    if too_early:
        assert why is not None and why.reason == "not_yet_valid" and "not valid yet" in why.message
    else:
        assert why is None


def test_zero_leeway_is_exact() -> None:
    assert time_problem(NOW, None, NOW, 0) is None
    assert time_problem(NOW - 0.001, None, NOW, 0) is not None


# --- scopes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "scopes"),
    [
        ({}, set()),
        ({"scope": "read write"}, {"read", "write"}),
        ({"scope": "  read   write  "}, {"read", "write"}),
        ({"scope": ""}, set()),
        ({"scp": ["read", "write"]}, {"read", "write"}),
        ({"scp": "read write"}, {"read", "write"}),
        ({"scp": ["read", 7, None, {"x": 1}]}, {"read"}),
        ({"scope": "a", "scp": ["b"]}, {"a", "b"}),
        ({"scope": 42}, set()),
        ({"scope": None, "scp": None}, set()),
    ],
)
def test_scopes_of(claims: dict[str, object], scopes: set[str]) -> None:
    assert scopes_of(claims) == frozenset(scopes)


def test_missing_scopes() -> None:
    assert missing_scopes(frozenset({"a", "b"}), frozenset({"a"})) == frozenset()
    assert missing_scopes(frozenset({"a"}), frozenset({"a", "b"})) == frozenset({"b"})


# --- GateAuthenticator: the decision on every request ------------------------------------------------------


def _gate(**kw: object) -> GateAuthenticator:
    args: dict[str, object] = {"leeway": LEEWAY, "opaque_tokens": "pass", "required_scopes": []}
    args.update(kw)
    return GateAuthenticator(**args)  # type: ignore[arg-type]


async def test_unexpired_token_passes_with_its_claims() -> None:
    token = unsigned({"exp": NOW + 100, "sub": "alice"})
    identity = await _gate().authenticate(f"Bearer {token}", NOW)
    assert identity.kind is Kind.JWT
    assert identity.token == token
    assert identity.claims["sub"] == "alice"


async def test_token_without_exp_passes() -> None:
    identity = await _gate().authenticate("Bearer " + compact(HEADER, {"sub": "x"}), NOW)
    assert identity.kind is Kind.JWT


async def test_future_iat_is_no_reason_to_reject() -> None:
    token = compact(HEADER, {"exp": NOW + 100, "iat": NOW + 86400})
    assert (await _gate().authenticate(f"Bearer {token}", NOW)).kind is Kind.JWT


async def test_float_exp_in_leeway_passes_and_beyond_fails() -> None:
    token = compact(HEADER, {"exp": NOW - LEEWAY + 0.5})
    assert (await _gate().authenticate(f"Bearer {token}", NOW)).kind is Kind.JWT
    with pytest.raises(InvalidToken, match="expired") as info:
        await _gate().authenticate(f"Bearer {token}", NOW + 1.0)
    assert info.value.reason == "expired"


async def test_same_token_is_judged_against_now_on_every_request() -> None:
    # Inspection is cached by token; the time decision must not be.
    gate = _gate(leeway=0)
    token = compact(HEADER, {"exp": NOW + 10})
    await gate.authenticate(f"Bearer {token}", NOW)
    with pytest.raises(InvalidToken):
        await gate.authenticate(f"Bearer {token}", NOW + 11)


async def test_nbf_beyond_leeway_rejected() -> None:
    token = compact(HEADER, {"exp": NOW + 7200, "nbf": NOW + LEEWAY + 30})
    with pytest.raises(InvalidToken, match="not valid yet") as info:
        await _gate().authenticate(f"Bearer {token}", NOW)
    assert info.value.reason == "not_yet_valid"


@pytest.mark.parametrize("value", [None, "Basic abc", "Digest x=1"])
async def test_missing_or_other_scheme_is_missing_token(value: str | None) -> None:
    with pytest.raises(MissingToken) as info:
        await _gate().authenticate(value, NOW)
    assert info.value.challenge_error() is None
    assert info.value.status == 401


async def test_too_large_is_431() -> None:
    with pytest.raises(HeaderTooLarge) as info:
        await _gate().authenticate("Bearer " + "a" * MAX_AUTHORIZATION_BYTES, NOW)
    assert info.value.status == 431


async def test_malformed_is_invalid_token() -> None:
    with pytest.raises(InvalidToken) as info:
        await _gate().authenticate("Bearer " + compact(HEADER, {"exp": "tomorrow"}), NOW)
    assert info.value.reason == "malformed"


async def test_opaque_follows_the_setting() -> None:
    assert (await _gate(opaque_tokens="pass").authenticate("Bearer opaque123", NOW)).kind is Kind.OPAQUE
    with pytest.raises(InvalidToken) as info:
        await _gate(opaque_tokens="reject").authenticate("Bearer opaque123", NOW)
    assert info.value.reason == "opaque_rejected"


@pytest.mark.parametrize(
    ("claims", "ok"),
    [
        ({"scope": "mcp:read mcp:write"}, True),
        ({"scp": ["mcp:write", "mcp:read", "other"]}, True),
        ({"scope": "mcp:read"}, False),
        ({}, False),
    ],
)
async def test_required_scopes(claims: dict[str, object], ok: bool) -> None:
    gate = _gate(required_scopes=["mcp:write", "mcp:read"])
    token = compact(HEADER, {"exp": NOW + 100, **claims})
    if ok:
        assert (await gate.authenticate(f"Bearer {token}", NOW)).kind is Kind.JWT
    else:
        with pytest.raises(InsufficientScope) as info:
            await gate.authenticate(f"Bearer {token}", NOW)
        assert info.value.status == 403
        assert info.value.scope == ("mcp:read", "mcp:write")


async def test_real_clock_smoke() -> None:
    # The authenticator takes `now`; real time works the same way.
    token = unsigned({"exp": time.time() + 60})
    assert (await _gate(leeway=0).authenticate(f"Bearer {token}", time.time())).kind is Kind.JWT


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(alphabet="aZ09-._~+/= \t\n", max_size=40))
def test_parse_authorization_accepts_exactly_the_b64token_alphabet(token: str) -> None:
    # The bearer check is one regex scan; it must accept exactly the RFC 6750 b64token characters (as the
    # per-character check it replaced did), never a newline, a space inside the token or a non-ASCII letter.
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
    got = parse_authorization("Bearer " + token)
    stripped = ("Bearer " + token).strip().partition(" ")[2].strip(" \t")
    if not stripped:
        assert got is BearerProblem.EMPTY
    elif all(ch in alphabet for ch in stripped):
        assert got == stripped
    else:
        assert got is BearerProblem.BAD_SYNTAX
