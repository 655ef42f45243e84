"""The redirect to the upstream IdP, minted only after consent (OpenID Connect Core 1.0 §3.1.2.1).

* Our own ``state`` (RFC 6749 §10.12: "The client MUST implement CSRF protection for its redirection URI"),
  ``nonce`` (OIDC Core §3.1.2.1, checked against the ID token at the callback) and PKCE S256 (RFC 7636 §4.2;
  RFC 9700 §2.1.1: clients "MUST use PKCE" or equivalent) for every login. They are single use
  (``take_pending``) and short-lived (``PENDING_TTL_SECONDS``).
* The pending record is bound to the browser (the hash of its consent cookie), so a login started in one
  browser cannot be completed in another (the confused-deputy and login-CSRF attacks of the MCP security
  best practices).
* Provider profiles (:mod:`sidecar.providers`): Google gets ``access_type=offline`` and never the
  ``offline_access`` scope; other providers get ``offline_access``; the generic profile adds
  ``prompt=consent`` (OIDC Core §11), ``force_consent`` overrides the profile either way.
* The upstream ``redirect_uri`` is ``<public_url>/oauth/callback``: register exactly that at the IdP.
"""

from __future__ import annotations

import logging
import secrets
from typing import Final

from aiohttp import web

from sidecar.config import Settings
from sidecar.idp import IdPUnavailable
from sidecar.oauth.common import SECRET_BYTES, s256, with_params
from sidecar.oauth.context import idp_of, oauth, store_down, store_of
from sidecar.oauth.errors import NO_STORE, ServerError, TemporarilyUnavailable
from sidecar.oauth.request import AuthorizationRequest, error_to_client
from sidecar.problems import IDP_RETRY_AFTER_SECONDS
from sidecar.providers import detect_provider, offline_access_params
from sidecar.store.base import PENDING_TTL_SECONDS, StoreUnavailable, token_hash

log = logging.getLogger("sidecar.oauth.upstream")

# The user has this long to finish the IdP's login pages; the state is useless afterwards (DESIGN §5).
UPSTREAM_STATE_TTL_SECONDS: Final = PENDING_TTL_SECONDS


def upstream_authorize_url(
    settings: Settings,
    authorization_endpoint: str,
    *,
    redirect_uri: str,
    state: str,
    nonce: str,
    code_challenge: str,
) -> str:
    """The upstream authorization request for the configured provider profile (pure)."""
    provider = detect_provider(settings.idp_issuer, settings.idp_provider)
    scopes, extra = offline_access_params(provider, settings.idp_scopes, settings.force_consent)
    assert settings.idp_client_id is not None
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": settings.idp_client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return with_params(authorization_endpoint, params)


async def redirect_upstream(
    request: web.Request, req: AuthorizationRequest, browser_cookie: str, *, status: int = 302
) -> web.Response:
    """Store the pending login and send the browser to the IdP; errors go back to the (valid) client."""
    st = oauth(request)
    issuer = st.endpoints.issuer
    try:
        metadata = await idp_of(request).discover()
    except IdPUnavailable as exc:
        log.warning("upstream discovery failed before the login redirect: %s", exc)
        return error_to_client(
            req.redirect_uri,
            req.state,
            TemporarilyUnavailable(
                "the identity provider is unavailable; try again", retry_after=IDP_RETRY_AFTER_SECONDS
            ),
            issuer=issuer,
            status=status,
        )
    if metadata.authorization_endpoint is None:
        log.error("the upstream IdP's discovery document has no authorization_endpoint")
        return error_to_client(
            req.redirect_uri, req.state, ServerError("the identity provider is misconfigured"), issuer=issuer,
            status=status,
        )
    state = secrets.token_urlsafe(SECRET_BYTES)
    nonce = secrets.token_urlsafe(SECRET_BYTES)
    verifier = secrets.token_urlsafe(SECRET_BYTES * 2)  # 86 characters: within RFC 7636's 43-128
    payload = {**req.to_payload(), "nonce": nonce, "verifier": verifier, "browser": token_hash(browser_cookie)}
    try:
        await store_of(request).put_pending(state, payload, ttl=UPSTREAM_STATE_TTL_SECONDS)
    except StoreUnavailable as exc:
        raise store_down(request, "put_pending", exc) from exc
    location = upstream_authorize_url(
        st.settings,
        metadata.authorization_endpoint,
        redirect_uri=st.endpoints.callback,
        state=state,
        nonce=nonce,
        code_challenge=s256(verifier),
    )
    return web.Response(status=status, headers={**NO_STORE, "Location": location})
