"""The gate's bearer check, run on every proxied request (``tools/list`` included): DESIGN §2, §4.

The decisions are the pure functions of :mod:`sidecar.tokens`; this module only adds the cache and, when
``jwks_url`` is set, signature verification (:mod:`sidecar.jwks`). What a token *is* never depends on the
clock, so inspection results are cached by token; whether it is valid *now* is decided on every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.challenge import AuthProblem, HeaderTooLarge, InsufficientScope, InvalidToken, MissingToken
from sidecar.tokens import (
    OPAQUE,
    BearerProblem,
    Inspected,
    Kind,
    inspect,
    missing_scopes,
    parse_authorization,
    time_problem,
)
from sidecar.ttlcache import BoundedCache

if TYPE_CHECKING:
    from sidecar.jwks import JwksVerifier  # PyJWT and cryptography: only when jwks_url is set

# Distinct tokens remembered, evicted oldest-first when full. Only well-formed JWTs of at most
# CACHEABLE_TOKEN_BYTES are kept (real ones are 1-2 KB), so anonymous clients sending 16 KB garbage cannot grow
# the cache past ~40 MB; the rest are simply inspected again (a few microseconds).
TOKEN_CACHE_ENTRIES = 10_000
CACHEABLE_TOKEN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the bearer and its (unverified or verified) claims."""

    token: str
    kind: Kind
    claims: Mapping[str, Any]
    grant_id: str | None = None  # broker mode: the grant the client token belongs to
    scopes: tuple[str, ...] | None = None  # broker mode: a token narrowed at refresh carries only these


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None, now: float) -> Identity: ...


_PROBLEM_ANSWERS = {
    BearerProblem.EMPTY: "the bearer token is empty",
    BearerProblem.BAD_SYNTAX: "the bearer token is malformed",
}


def reject_for(problem: BearerProblem) -> Exception:
    if problem is BearerProblem.TOO_LARGE:
        return HeaderTooLarge(problem.value)
    if problem in (BearerProblem.MISSING, BearerProblem.NOT_BEARER):
        return MissingToken(problem.value)
    return InvalidToken(_PROBLEM_ANSWERS[problem], reason="malformed")


class GateAuthenticator:
    """Checks the client's own token: shape, time, scopes and (optionally) signature, issuer, audience."""

    def __init__(
        self,
        *,
        leeway: float,
        opaque_tokens: str,
        required_scopes: list[str],
        verifier: JwksVerifier | None = None,
    ) -> None:
        self._leeway = leeway
        self._reject_opaque = opaque_tokens == "reject"
        self._required = frozenset(required_scopes)
        self._required_sorted = tuple(sorted(self._required))
        self._verifier = verifier
        self._cache: BoundedCache[str, Inspected] = BoundedCache(TOKEN_CACHE_ENTRIES)

    async def _inspect(self, token: str) -> Inspected:
        found = self._cache.get(token)
        if found is not None:
            return found
        result = inspect(token)
        if result.kind is Kind.JWT and self._verifier is not None:
            claims = await self._verifier.verify(token, result.header)
            result = Inspected(Kind.JWT, claims, result.header, result.exp, result.nbf)
        if result.kind is Kind.JWT and len(token) <= CACHEABLE_TOKEN_BYTES:
            self._cache.put(token, result)  # no deadline: exp/nbf are checked on every request
        return result

    async def authenticate(self, authorization: str | None, now: float) -> Identity:
        try:
            return await self._authenticate(authorization, now)
        except AuthProblem as problem:
            # MCP authorization (2025-11-25, "Scope Selection Strategy"): clients take the scopes to request
            # from the 401 challenge's scope parameter first (RFC 6750 §3 allows it on any challenge).
            if self._required and problem.status == 401 and not problem.scope:
                problem.scope = self._required_sorted
            raise

    async def _authenticate(self, authorization: str | None, now: float) -> Identity:
        token = parse_authorization(authorization)
        if isinstance(token, BearerProblem):
            raise reject_for(token)
        info = await self._inspect(token)
        if info is OPAQUE:
            if self._reject_opaque:
                raise InvalidToken("opaque (non-JWT) tokens are not accepted here", reason="opaque_rejected")
            return Identity(token, Kind.OPAQUE, {})
        if info.kind is Kind.MALFORMED:
            raise InvalidToken(info.problem or "the token is malformed", reason="malformed")
        why = time_problem(info.exp, info.nbf, now, self._leeway)
        if why is not None:
            raise InvalidToken(why.message, reason=why.reason)
        if self._required and missing_scopes(info.scopes, self._required):
            raise InsufficientScope(
                "the token lacks a required scope", scope=self._required_sorted, reason="insufficient_scope"
            )
        return Identity(token, Kind.JWT, info.claims)
