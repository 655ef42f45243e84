"""The upstream IdP's redirect back to us (OIDC Core §3.1.2.5-§3.1.3.7), ending in our own authorization
response to the MCP client (RFC 6749 §4.1.2, RFC 9207).

1. ``state``: must name a pending login (single use: ``take_pending``); else 400 ``invalid_request`` page
   (RFC 6749 §10.12: the state binds the response to the request). The login must finish in the browser
   that started it (its consent cookie hash is in the pending record): else 403.
2. An IdP error (``error=...``) goes back to the client: ``access_denied`` and ``temporarily_unavailable``
   pass through, anything else becomes ``server_error``; the IdP's description is sanitized and logged,
   never forwarded.
3. The code is exchanged with our PKCE verifier (``client_secret_basic`` or ``_post``, per settings), and the
   ID token verified (JWKS signature, ``iss``, ``aud``, ``exp``, ``nonce``: OIDC Core §3.1.3.7).
4. The grant is created through the store with the encrypted upstream credentials. A failed store write is
   an error page (503) with a clear message; nothing half-made stays behind.
5. Our code (single use, ``CODE_TTL_SECONDS`` = 60 s) goes to the client with its ``state`` and ``iss``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, Final

from aiohttp import web

from sidecar.audit import record
from sidecar.idp import IdPClient, IdPRejected, IdPUnavailable, IdTokenInvalid, sanitize_description
from sidecar.oauth.common import SECRET_BYTES, check_rate
from sidecar.oauth.consent import CONSENT_TTL_SECONDS, consent_target, cookie_name
from sidecar.oauth.context import idp_of, metrics_of, oauth, store_down, store_of
from sidecar.oauth.errors import (
    AccessDenied,
    InvalidRequest,
    Problem,
    ServerError,
    TemporarilyUnavailable,
)
from sidecar.oauth.outcomes import count
from sidecar.oauth.pages import error_page
from sidecar.oauth.request import AuthorizationRequest, error_to_client, redirect_to_client
from sidecar.problems import IDP_RETRY_AFTER_SECONDS
from sidecar.store.base import CODE_TTL_SECONDS, RecordCorrupt, StoreUnavailable, UpstreamCredentials, token_hash

log = logging.getLogger("sidecar.oauth.callback")

# ID token claims that describe the login, not the user: not kept in the grant.
_DROPPED_CLAIMS: Final = frozenset({"nonce", "at_hash", "c_hash", "s_hash", "auth_time", "iat", "exp", "nbf", "jti"})


def _upstream_error(error: str) -> Problem:
    if error == "access_denied":
        return AccessDenied("the user or the identity provider denied the sign-in")
    if error == "temporarily_unavailable":
        return TemporarilyUnavailable(
            "the identity provider is temporarily unavailable", retry_after=IDP_RETRY_AFTER_SECONDS
        )
    return ServerError("the identity provider refused the sign-in")


async def handle(request: web.Request) -> web.Response:
    st = oauth(request)
    issuer = st.endpoints.issuer
    query = request.query
    try:
        check_rate(request, st.limits["callback"])
        state = query.get("state")
        if not state:
            raise InvalidRequest("the identity provider's answer has no state")
        try:
            pending = await store_of(request).take_pending(state)
        except StoreUnavailable as exc:
            raise store_down(request, "take_pending", exc) from exc
        except RecordCorrupt:
            pending = None
        if pending is None or "nonce" not in pending:
            log.warning("idp callback with an unknown, expired or reused state")
            raise InvalidRequest("this sign-in is unknown, expired or already finished; start again from the client")
        req = AuthorizationRequest.from_payload(pending)
        cookie = request.cookies.get(cookie_name(req.client_id))
        if not cookie or not secrets.compare_digest(token_hash(cookie), str(pending.get("browser", ""))):
            log.warning("idp callback in a browser that did not start the sign-in", extra={"client_id": req.client_id})
            raise AccessDenied("this sign-in was started in another browser")
    except Problem as err:
        count(request, "login", err)
        return error_page(request, err)

    upstream_error = query.get("error")
    if upstream_error is not None:
        log.warning(
            "the idp answered the login with an error",
            extra={"client_id": req.client_id, "error": sanitize_description(upstream_error),
                   "description": sanitize_description(query.get("error_description"))},
        )
        count(request, "login", "idp_error")
        return error_to_client(req.redirect_uri, req.state, _upstream_error(upstream_error), issuer=issuer)
    code = query.get("code")
    if not code:
        count(request, "login", "idp_error")
        return error_to_client(
            req.redirect_uri, req.state, ServerError("the identity provider sent no code"), issuer=issuer
        )

    try:
        claims, upstream = await _login(request, code, str(pending["verifier"]), str(pending["nonce"]))
    except Problem as err:
        count(request, "login", err)
        record(request.app, "oauth.login", client_id=req.client_id, outcome=err.error, remote=request.remote)
        return error_to_client(req.redirect_uri, req.state, err, issuer=issuer)

    subject = str(claims["sub"])
    store = store_of(request)
    try:
        grant = await store.create_grant(
            subject=subject,
            client_id=req.client_id,
            scopes=req.scopes,
            claims={k: v for k, v in claims.items() if k not in _DROPPED_CLAIMS},
            upstream=upstream,
        )
    except StoreUnavailable as exc:
        count(request, "login", "store_unavailable")
        log.error("the grant could not be stored", extra={"client_id": req.client_id})
        return error_page(request, _save_failed(request, "create_grant", exc))
    our_code = secrets.token_urlsafe(SECRET_BYTES)
    code_payload = {
        "grant_id": grant.grant_id,
        "client_id": req.client_id,
        "redirect_uri": req.redirect_uri,
        "code_challenge": req.code_challenge,
        "scopes": list(req.scopes),
        "resource": req.resource,
    }
    try:
        await store.put_code(our_code, code_payload, ttl=CODE_TTL_SECONDS)
    except StoreUnavailable as exc:
        count(request, "login", "store_unavailable")
        log.error("the authorization code could not be stored", extra={"client_id": req.client_id})
        try:
            await store.delete_grant(grant.grant_id)  # no half-made grant stays behind
        except StoreUnavailable:
            metrics_of(request).store_errors.labels("delete_grant").inc()
        return error_page(request, _save_failed(request, "put_code", exc))
    try:
        # "the decision stored per user and client": the user is known only now.
        await store.put_consent(
            subject, consent_target(req.client_id, req.redirect_uri), req.scopes, ttl=CONSENT_TTL_SECONDS
        )
    except StoreUnavailable:
        metrics_of(request).store_errors.labels("put_consent").inc()  # a convenience record: not fatal
    if upstream.refresh_token is None:
        # Without an upstream refresh token the session ends when the IdP's access token expires: every
        # user would be logged out then. Usually the IdP dropped offline_access (see the provider table).
        metrics_of(request).upstream_logins.labels("no").inc()
        log.warning(
            "login completed without an upstream refresh token: the session ends when the IdP's access token "
            "expires; check idp_provider / force_consent and the IdP client's refresh-token settings",
            extra={"client_id": req.client_id, "grant": grant.grant_id},
        )
    else:
        metrics_of(request).upstream_logins.labels("yes").inc()
        log.info("login completed", extra={"client_id": req.client_id, "grant": grant.grant_id})
    count(request, "login", "completed")
    record(request.app, "oauth.login", sub=subject, client_id=req.client_id, grant=grant.grant_id,
           scopes=list(req.scopes), outcome="ok", remote=request.remote)
    return redirect_to_client(req.redirect_uri, {"code": our_code, "state": req.state}, issuer=issuer)


def _save_failed(request: web.Request, operation: str, exc: StoreUnavailable) -> Problem:
    err = store_down(request, operation, exc)
    err.description = (
        "Your sign-in succeeded, but it could not be saved because the credential store is unreachable. "
        "Nothing was stored; please try connecting again in a moment."
    )
    return err


async def _login(
    request: web.Request, code: str, verifier: str, nonce: str
) -> tuple[dict[str, Any], UpstreamCredentials]:
    """Exchange the IdP's code and verify its ID token; IdP trouble becomes an :class:`OAuthError`."""
    idp = idp_of(request)
    callback = oauth(request).endpoints.callback
    try:
        tokens = await idp.exchange_code(code, callback, verifier)
        if tokens.id_token is None:
            log.error("the idp's token response has no id_token (is 'openid' in idp_scopes?)")
            raise ServerError("the identity provider returned no ID token")
        claims = await idp.verify_id_token(tokens.id_token, nonce)
    except IdPRejected as exc:
        log.warning("the idp refused the code exchange", extra={"error": exc.error, "description": exc.description})
        raise ServerError("the identity provider refused the sign-in") from None
    except IdPUnavailable as exc:
        log.warning("the idp was unavailable for the code exchange: %s", exc)
        raise TemporarilyUnavailable(
            "the identity provider is unavailable; try again", retry_after=IDP_RETRY_AFTER_SECONDS
        ) from None
    except IdTokenInvalid as exc:
        log.warning("the idp's id_token did not verify: %s", exc.reason)
        raise AccessDenied("the identity provider's ID token did not verify") from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ServerError("the identity provider's ID token has no subject")
    exp = claims.get("exp")
    upstream = UpstreamCredentials(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        id_token=tokens.id_token,
        access_expires_at=tokens.expires_at,
        id_token_expires_at=float(exp) if isinstance(exp, int | float) else None,
        access_issued_at=oauth(request).clock(),
    )
    if oauth(request).settings.idp_userinfo_claims and tokens.access_token:
        claims = await _with_userinfo(idp, tokens.access_token, claims)
    return claims, upstream


async def _with_userinfo(idp: IdPClient, access_token: str, claims: dict[str, Any]) -> dict[str, Any]:
    """``idp_userinfo_claims``: identity claims the ID token lacks, from the UserInfo endpoint (OIDC Core
    §5.4: claims requested by scope values "are returned from the UserInfo Endpoint" when an access token is
    issued). §5.3.2: "The sub Claim in the UserInfo Response MUST be verified to exactly match the sub Claim
    in the ID Token; if they do not match, the UserInfo Response values MUST NOT be used." The ID token's own
    claims win over the userinfo answer's. Trouble at the endpoint is logged; the login goes on."""
    try:
        info = await idp.userinfo(access_token)
    except IdPUnavailable as exc:
        log.warning("the idp's userinfo endpoint failed; using the ID token's claims only: %s", exc)
        return claims
    if not isinstance(info.get("sub"), str) or not secrets.compare_digest(
        str(info["sub"]).encode(), str(claims["sub"]).encode()
    ):
        log.warning("the idp's userinfo answer names another subject; ignored")
        return claims
    return {**{k: v for k, v in info.items() if k not in _DROPPED_CLAIMS}, **claims}
