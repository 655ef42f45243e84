"""The token endpoint (RFC 6749 §3.2): ``authorization_code`` (§4.1.3 with PKCE, RFC 7636 §4.5-4.6) and
``refresh_token`` (§6) per DESIGN §8.

* §3.2: "The client MUST use the HTTP POST method"; parameters are form-encoded; "Parameters sent without a
  value MUST be treated as if they were omitted", "Request and response parameters MUST NOT be included
  more than once".
* §4.1.3: the code was issued to this client, ``redirect_uri`` is "identical" to the authorization
  request's, PKCE verifies; every failure is ``invalid_grant``. §4.1.2: "The client MUST NOT use the
  authorization code more than once. If an authorization code is used more than once, the authorization
  server MUST deny the request and SHOULD revoke (when possible) all tokens previously issued based on that
  authorization code": a redeemed code leaves a tombstone for its remaining life, and a replay revokes the
  grant.
* §6 / RFC 9700 §4.14.2 (DESIGN §8): refresh tokens are single use; each rotation issues a pair with full
  configured lifetimes; a retry within ``refresh_replay_grace_seconds`` gets the same pair again (a
  deliberate allowance for clients that refresh twice; ``0`` = strict RFC 9700), reuse after that revokes
  the whole family. Rotation is one atomic store step. "The requested scope MUST NOT include any scope not
  originally granted" (``invalid_scope``).
* §5.1: "The authorization server MUST include the HTTP Cache-Control response header field with a value
  of no-store"; ``expires_in`` is the token's real remaining life (never more).
* §5.2: errors (:mod:`sidecar.oauth.errors`); ``invalid_client`` is 401 with ``WWW-Authenticate``.
* RFC 8707 §2: a ``resource`` given here must be ours (``invalid_target``).
* A grant the broker declared dead (upstream credentials dropped, or no refresh token and an expired access
  token) is ``invalid_grant`` here: never 200 with tokens that would only get 401.
* ``client_token: id_token`` (seed 000): the bearer is the upstream ID token; when it has less than
  ``id_token_refresh_threshold_seconds`` left and an upstream refresh token exists, it is refreshed first
  through the shared get-or-refresh engine (:mod:`sidecar.refresh`); IdP trouble keeps the original (soft
  fail) and is logged. No client refresh token
  is issued in this mode: the client re-authorizes.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Final

from aiohttp import web

from sidecar.audit import record
from sidecar.challenge import InvalidToken, ServiceUnavailable
from sidecar.oauth.clients import Client, authenticate, presented_credentials
from sidecar.oauth.common import (
    check_rate,
    parse_form,
    parse_scope,
    pkce_matches,
    read_limited,
    resource_allowed,
    secure_equal,
)
from sidecar.oauth.context import (
    UnknownClient,
    credentials_of,
    metrics_of,
    oauth,
    resolve_client,
    store_down,
    store_of,
)
from sidecar.oauth.errors import (
    NO_STORE,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    Problem,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from sidecar.oauth.outcomes import count
from sidecar.oauth.registration import registration_ttl
from sidecar.refresh import dead
from sidecar.store.base import (
    CODE_TTL_SECONDS,
    Grant,
    RecordCorrupt,
    RotationOutcome,
    StoreUnavailable,
    TokenPair,
    mint_access_token,
    mint_refresh_token,
    parse_client_token,
)

log = logging.getLogger("sidecar.oauth.token")

MAX_FORM_BYTES: Final = 16 * 1024
_TOMBSTONE: Final = "redeemed_grant"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={**NO_STORE, "Access-Control-Allow-Origin": "*"},
    )


def remaining(expires_at: float, now: float, cap: float | None = None) -> int:
    """Whole seconds left, rounded down, never negative and never above ``cap`` (the configured lifetime)."""
    left = math.floor(expires_at - now)
    if cap is not None:
        left = min(left, int(cap))
    return max(0, left)


async def read_form(request: web.Request) -> dict[str, str]:
    """The form body; duplicated or empty parameters are handled per RFC 6749 §3.2 / §3.1."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    body = await read_limited(request, MAX_FORM_BYTES)
    if body is None:
        raise InvalidRequest("the request is too large")
    try:
        form = parse_form(body)
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not UTF-8") from None
    out: dict[str, str] = {}
    for key, values in form.items():
        if len(values) > 1:
            raise InvalidRequest(f"the parameter {key} appears more than once")
        if values[0] != "":
            out[key] = values[0]
    return out


async def authenticated_client(request: web.Request, form: dict[str, str]) -> Client:
    presented = presented_credentials(request, form)
    if not presented.client_id:
        raise InvalidClient("client_id is missing")
    try:
        client = await resolve_client(request, presented.client_id)
    except UnknownClient as exc:
        raise InvalidClient(f"unknown client: {exc.reason}") from None
    authenticate(client, presented)
    return client


async def handle(request: web.Request) -> web.Response:
    st = oauth(request)
    grant_type: str | None = None
    form: dict[str, str] | None = None
    try:
        check_rate(request, st.limits["token"])
        form = await read_form(request)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is missing")
        if grant_type not in ("authorization_code", "refresh_token"):
            raise UnsupportedGrantType("only authorization_code and refresh_token are supported")
        client = await authenticated_client(request, form)
        if grant_type not in client.grant_types:
            raise UnauthorizedClient(f"this client may not use the {grant_type} grant")
        resource = form.get("resource")
        if resource is not None and not resource_allowed(resource, st.settings):
            raise InvalidTarget("resource is not this server")
        if grant_type == "authorization_code":
            body = await _authorization_code(request, client, form)
        else:
            body = await _refresh_token(request, client, form)
    except Problem as err:
        count(request, "token", err, grant_type)
        record(request.app, "oauth.token", grant_type=_grant_type_label(form), outcome=err.error,
               remote=request.remote)
        response = err.response()
        response.headers["Access-Control-Allow-Origin"] = "*"
        return response
    count(request, "token", "issued", grant_type)
    await _renew_registration(request, client)
    issued = parse_client_token(str(body.get("access_token", "")))
    record(request.app, "oauth.token", client_id=client.client_id, grant_type=grant_type, outcome="ok",
           grant=issued.grant_id if issued else None, scopes=str(body.get("scope", "")).split(),
           remote=request.remote)
    return _json(body)


def _grant_type_label(form: dict[str, str] | None) -> str | None:
    value = (form or {}).get("grant_type")
    return value if value in ("authorization_code", "refresh_token") else None if value is None else "other"


async def _renew_registration(request: web.Request, client: Client) -> None:
    """Keep an active client's registration alive as long as its newest refresh token (best effort)."""
    if client.kind != "registered":
        return
    ttl = registration_ttl(oauth(request).settings.refresh_token_ttl_seconds)
    try:
        await store_of(request).put_client(client.client_id, client.to_record(), ttl=ttl)
    except StoreUnavailable:
        metrics_of(request).store_errors.labels("put_client").inc()


# --- authorization_code -------------------------------------------------------------------------------------


async def _authorization_code(request: web.Request, client: Client, form: dict[str, str]) -> dict[str, Any]:
    code = form.get("code")
    verifier = form.get("code_verifier")
    redirect_uri = form.get("redirect_uri")
    if code is None:
        raise InvalidRequest("code is missing")
    if verifier is None:
        raise InvalidRequest("code_verifier is missing (PKCE is required)")
    store = store_of(request)
    try:
        payload = await store.take_code(code)
    except StoreUnavailable as exc:
        raise store_down(request, "take_code", exc) from exc
    except RecordCorrupt:
        payload = None
    if payload is None:
        raise InvalidGrant("the authorization code is invalid, expired or already used")
    if _TOMBSTONE in payload:
        # RFC 6749 §4.1.2: a code used twice: deny, and revoke what was issued from it.
        grant_id = str(payload[_TOMBSTONE])
        log.warning("authorization code replayed: revoking its grant", extra={"grant": grant_id})
        await _delete_grant(request, grant_id)
        raise InvalidGrant("the authorization code was already used; the tokens issued from it are revoked")
    grant_id = str(payload["grant_id"])
    try:
        # RFC 6749 §4.1.3: "ensure that the authorization code was issued to the authenticated confidential
        # client, or if the client is public, ensure that the code was issued to "client_id" in the request"
        if not secure_equal(str(payload["client_id"]), client.client_id):
            raise InvalidGrant("the authorization code was issued to another client")
        # §4.1.3: "ensure that the "redirect_uri" parameter is present if the "redirect_uri" parameter was
        # included in the initial authorization request ... and if included ensure that their values are
        # identical."
        if redirect_uri is None or not secure_equal(redirect_uri, str(payload["redirect_uri"])):
            raise InvalidGrant("redirect_uri does not match the authorization request")
        # RFC 7636 §4.6: "If the values are not equal, an error response indicating "invalid_grant" ... MUST
        # be returned."
        if not pkce_matches(verifier, str(payload["code_challenge"])):
            raise InvalidGrant("PKCE verification failed")
        code_resource = payload.get("resource")
        resource = form.get("resource")
        if resource is not None and code_resource is not None and resource != code_resource:
            raise InvalidTarget("resource differs from the authorization request")
    except Problem:
        await _delete_grant(request, grant_id)  # the code is spent; its grant must not linger
        raise
    try:
        await store.put_code(code, {_TOMBSTONE: grant_id}, ttl=CODE_TTL_SECONDS)
    except StoreUnavailable:
        metrics_of(request).store_errors.labels("put_code").inc()  # replay detection is best effort
    if oauth(request).settings.client_token == "id_token":
        return await _id_token_response(request, grant_id)
    include_refresh = "refresh_token" in client.grant_types
    pair = await _issue(request, grant_id, include_refresh)
    return _token_body(request, pair, tuple(str(s) for s in payload.get("scopes", [])))


async def _delete_grant(request: web.Request, grant_id: str) -> None:
    try:
        await store_of(request).delete_grant(grant_id)
    except StoreUnavailable:
        metrics_of(request).store_errors.labels("delete_grant").inc()


async def _issue(request: web.Request, grant_id: str, include_refresh: bool) -> TokenPair:
    settings = oauth(request).settings
    try:
        pair = await store_of(request).issue_tokens(
            grant_id,
            access_token=mint_access_token(grant_id),
            refresh_token=mint_refresh_token(grant_id) if include_refresh else None,
            access_ttl=settings.access_token_ttl_seconds,
            refresh_ttl=settings.refresh_token_ttl_seconds,
        )
    except StoreUnavailable as exc:
        raise store_down(request, "issue_tokens", exc) from exc
    if pair is None:
        raise InvalidGrant("the authorization is gone; authorize again")
    return pair


def _token_body(request: web.Request, pair: TokenPair, scopes: tuple[str, ...]) -> dict[str, Any]:
    state = oauth(request)
    settings, now = state.settings, state.clock()
    body: dict[str, Any] = {
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": remaining(pair.access_expires_at, now, settings.access_token_ttl_seconds),
        # RFC 6749 §5.1: scope is included (it may differ from the request: tokens carry the grant's scopes).
        "scope": " ".join(scopes),
    }
    if pair.refresh_token is not None:
        body["refresh_token"] = pair.refresh_token
    return body


# --- refresh_token (DESIGN §8) ------------------------------------------------------------------------------


async def _refresh_token(request: web.Request, client: Client, form: dict[str, str]) -> dict[str, Any]:
    settings = oauth(request).settings
    token = form.get("refresh_token")
    if token is None:
        raise InvalidRequest("refresh_token is missing")
    parsed = parse_client_token(token)
    if parsed is None or parsed.kind != "refresh":
        raise InvalidGrant("the refresh token is invalid, expired or revoked")
    store = store_of(request)
    try:
        grant = await store.get_grant(parsed.grant_id)
    except StoreUnavailable as exc:
        raise store_down(request, "get_grant", exc) from exc
    except RecordCorrupt:
        grant = None
    if grant is None:
        raise InvalidGrant("the refresh token is invalid, expired or revoked")
    # RFC 6749 §6: "validate the refresh token and ensure that it was issued to the authenticated client".
    if not secure_equal(grant.client_id, client.client_id):
        raise InvalidGrant("the refresh token was issued to another client")
    if dead(grant.upstream, oauth(request).clock()):
        # The broker answered this grant's requests with 401 (re-authorize): renewing the client's tokens
        # would only earn another 401, a loop for clients that refresh on 401.
        raise InvalidGrant("the upstream authorization ended; authorize again")
    requested = parse_scope(form.get("scope"))
    if requested is not None and not set(requested) <= set(grant.scopes):
        # RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted".
        raise InvalidScope("the requested scope exceeds the original grant")
    # A narrower scope is real (issue 12): the new access token carries only it, in the answer and in what
    # the backend gets; the refresh token keeps the grant's scope (RFC 6749 §6: omitted = as granted).
    narrowed = None if requested is None or set(requested) == set(grant.scopes) else tuple(requested)
    try:
        result = await store.rotate_refresh_token(
            grant.grant_id,
            token,
            new_access_token=mint_access_token(grant.grant_id),
            new_refresh_token=mint_refresh_token(grant.grant_id),
            access_ttl=settings.access_token_ttl_seconds,
            refresh_ttl=settings.refresh_token_ttl_seconds,
            replay_grace=settings.refresh_replay_grace_seconds,
            scopes=narrowed,
        )
    except StoreUnavailable as exc:
        raise store_down(request, "rotate_refresh_token", exc) from exc
    if result.outcome is RotationOutcome.REUSE_DETECTED:
        metrics_of(request).oauth_refresh_reuse.labels("revoked").inc()
        log.warning("refresh token reused after rotation: token family revoked", extra={"grant": grant.grant_id})
        record(request.app, "oauth.refresh_reuse", grant=grant.grant_id, sub=grant.subject, client_id=grant.client_id,
               outcome="family_revoked", remote=request.remote)
        raise InvalidGrant("the refresh token was already used; every token of this authorization is revoked")
    if result.outcome is RotationOutcome.INVALID or result.tokens is None:
        raise InvalidGrant("the refresh token is invalid, expired or revoked")
    if result.outcome is RotationOutcome.REPLAYED:
        metrics_of(request).oauth_refresh_reuse.labels("replayed").inc()
        log.info("refresh token retried within the replay grace", extra={"grant": grant.grant_id})
    return _token_body(request, result.tokens, narrowed if narrowed is not None else grant.scopes)


# --- client_token: id_token (seed 000) ------------------------------------------------------------------------


async def _id_token_response(request: web.Request, grant_id: str) -> dict[str, Any]:
    store = store_of(request)
    try:
        grant = await store.get_grant(grant_id)
    except StoreUnavailable as exc:
        raise store_down(request, "get_grant", exc) from exc
    if grant is None or grant.upstream is None or grant.upstream.id_token is None:
        raise InvalidGrant("the authorization is gone; authorize again")
    id_token, expires_at = await refresh_id_token_if_short(request, grant)
    return {
        "access_token": id_token,
        "token_type": "Bearer",
        "expires_in": remaining(expires_at, oauth(request).clock()),
        "scope": " ".join(grant.scopes),
    }


async def refresh_id_token_if_short(request: web.Request, grant: Grant) -> tuple[str, float]:
    """The grant's ID token, refreshed first when it has less than the threshold left (soft fail).

    The refresh goes through the same get-or-refresh engine as the proxied path (single flight in this
    process, the store's lock across replicas, re-read and adopt, rotated tokens stored first), so two
    replicas never refresh one grant twice. Any failure keeps the original token (seed 000: "Soft-fail on
    errors: keep the original near-expired token rather than break /token"); a grant the IdP rejected is
    marked dead by the engine all the same.
    """
    settings = oauth(request).settings
    upstream = grant.upstream
    assert upstream is not None and upstream.id_token is not None
    original = (upstream.id_token, upstream.id_token_expires_at or 0.0)
    try:
        fresh = await credentials_of(request).refresh_id_token(grant, settings.id_token_refresh_threshold_seconds)
    except (InvalidToken, ServiceUnavailable) as exc:
        log.warning(
            "refreshing the near-expired id_token failed; returning the original",
            extra={"grant": grant.grant_id, "description": exc.description},
        )
        metrics_of(request).upstream_refreshes.labels("id_token_soft_fail").inc()
        return original
    creds = fresh.upstream
    if creds is None or creds.id_token is None:
        raise InvalidGrant("the upstream authorization ended; authorize again")
    if creds.id_token != upstream.id_token:
        log.info("refreshed a near-expired id_token at /token", extra={"grant": grant.grant_id})
    return creds.id_token, creds.id_token_expires_at or 0.0
