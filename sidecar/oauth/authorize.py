"""The authorization endpoint (RFC 6749 §3.1, §4.1.1) with PKCE (RFC 7636) and resource indicators
(RFC 8707), in front of the consent page and the upstream login.

Checks, in order, and how each failure is answered:

1. Rate limit per address: 429 page.
2. RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once": 400 page.
3. ``client_id``: a registration or a client ID metadata document; unknown: 400 ``invalid_client`` page.
4. ``redirect_uri``: required, and an exact match of a registered one (loopback IPs: any port, RFC 8252
   §7.3). RFC 6749 §4.1.2.1: on a bad client or redirect URI the server "MUST NOT automatically redirect
   the user-agent to the invalid redirection URI": 400 ``invalid_request`` page.
   From here on errors are redirected to the client with ``error``, ``state`` and ``iss`` (RFC 9207).
5. ``response_type=code`` (``unsupported_response_type``).
6. PKCE: ``code_challenge`` with ``code_challenge_method=S256`` required (RFC 7636 §4.4.1: an unsupported
   transformation is ``invalid_request``; the MCP spec: clients MUST use S256 and servers MUST support it).
7. ``scope`` optional (RFC 6749 §3.3: defaults apply), each one supported (``invalid_scope``).
8. ``resource`` optional, ours when given (RFC 8707 §2: ``invalid_target``).
9. Consent: remembered for this browser, client, redirect URI (port-free on loopback) and at least these
   scopes (and ``prompt`` is not ``consent``): straight to the upstream redirect; otherwise the consent page
   (200), never a redirect upstream.

Before all that, a request that reached us under another host than the issuer's is redirected (302) to the
same request on the issuer's host, so the consent cookie and the consent POST live on one host.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.oauth.clients import redirect_uri_matches
from sidecar.oauth.common import check_rate, parse_scope, resource_allowed, valid_code_challenge
from sidecar.oauth.consent import cookie_name, remembered, show_page
from sidecar.oauth.context import UnknownClient, oauth, resolve_client
from sidecar.oauth.errors import (
    NO_STORE,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    Problem,
    UnauthorizedClient,
    UnsupportedResponseType,
)
from sidecar.oauth.outcomes import count
from sidecar.oauth.pages import error_page
from sidecar.oauth.request import AuthorizationRequest, error_to_client
from sidecar.oauth.upstream import redirect_upstream

log = logging.getLogger("sidecar.oauth.authorize")


class _ClientPageError(OAuthError):
    """An unknown client on the authorization endpoint: 400 (not 401: there is no client authentication)."""

    error = "invalid_client"
    status = 400


# Added to the one redirect to the issuer's host: if the request still arrives under another Host (a proxy
# that rewrites Host), it is served as it is instead of redirected again, so there is never a loop.
HOST_REDIRECT_MARKER = "mcpsc_host_redirect"


def _other_host(request: web.Request, issuer: str) -> bool:
    """True when the browser reached us under another host than the issuer's: the consent cookie would be
    set on that host and the form posted to the issuer's, so the person would read "another browser"."""
    expected = (urlsplit(issuer).netloc or "").lower()
    return (request.host or "").lower() != expected


async def handle(request: web.Request) -> web.Response:
    st = oauth(request)
    if _other_host(request, st.endpoints.issuer):
        if HOST_REDIRECT_MARKER not in request.query:
            _, question, raw_query = request.raw_path.partition("?")
            target = st.endpoints.authorize + question + raw_query + ("&" if raw_query else "?")
            return web.Response(status=302, headers={**NO_STORE, "Location": target + HOST_REDIRECT_MARKER + "=1"})
        log.warning(
            "/oauth/authorize still reached under another Host than public_url's after redirecting there: "
            "a proxy in front rewrites Host; pass it through unchanged"
        )
    try:
        check_rate(request, st.limits["authorize"])
        query = request.query
        for name in set(query.keys()):
            if len(query.getall(name)) > 1:
                raise InvalidRequest(f"the parameter {name} appears more than once")
        client_id = query.get("client_id")
        try:
            client = await resolve_client(request, client_id)
        except UnknownClient as exc:
            log.info("authorize for an unknown client: %s", exc.reason)
            raise _ClientPageError(f"unknown client: {exc.reason}") from None
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            # RFC 6749 §4.1.1 makes it optional with one registered URI; OAuth 2.1 and the MCP spec require it.
            raise InvalidRequest("redirect_uri is required")
        if not redirect_uri_matches(client.redirect_uris, redirect_uri):
            log.info("authorize with an unregistered redirect_uri", extra={"client_id": client.client_id})
            raise InvalidRequest("redirect_uri is not registered for this client")
    except Problem as err:
        count(request, "authorize", err)
        return error_page(request, err)

    state = query.get("state")
    try:
        req = _validate(request, client.client_id, redirect_uri, state, client.grant_types)
    except Problem as err:
        return error_to_client(redirect_uri, state, err, issuer=st.endpoints.issuer)
    req = AuthorizationRequest(
        client_id=req.client_id,
        redirect_uri=req.redirect_uri,
        state=req.state,
        code_challenge=req.code_challenge,
        scopes=req.scopes,
        resource=req.resource,
        client_name=client.display_name(),
    )
    cookie = request.cookies.get(cookie_name(client.client_id))
    prompts = set((query.get("prompt") or "").split())
    try:
        if "consent" not in prompts and await remembered(request, client.client_id, redirect_uri, req.scopes, cookie):
            assert cookie is not None
            return await redirect_upstream(request, req, cookie)
        return await show_page(request, client, req, cookie)
    except Problem as err:
        return error_page(request, err)


def _validate(
    request: web.Request, client_id: str, redirect_uri: str, state: str | None, grant_types: tuple[str, ...]
) -> AuthorizationRequest:
    st = oauth(request)
    query = request.query
    response_type = query.get("response_type")
    if not response_type:
        raise InvalidRequest("response_type is required")
    if response_type != "code":
        raise UnsupportedResponseType("only response_type=code is supported")
    if "authorization_code" not in grant_types:
        raise UnauthorizedClient("this client may not use the authorization code grant")
    challenge = query.get("code_challenge")
    method = query.get("code_challenge_method")
    if not challenge:
        raise InvalidRequest("PKCE is required: send code_challenge with code_challenge_method=S256")
    # RFC 7636 §4.4.1: an unsupported transformation is answered with invalid_request; "plain" is refused.
    if method != "S256":
        raise InvalidRequest("code_challenge_method must be S256")
    if not valid_code_challenge(challenge):
        raise InvalidRequest("code_challenge is not a valid S256 challenge")
    requested = parse_scope(query.get("scope"))
    scopes = requested if requested is not None else st.default_scopes
    unknown = [s for s in scopes if s not in st.supported_scopes]
    if unknown:
        raise InvalidScope(f"unsupported scope: {' '.join(unknown)[:100]}")
    resource = query.get("resource")
    if resource is not None and not resource_allowed(resource, st.settings):
        raise InvalidTarget("resource is not this server")
    return AuthorizationRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=challenge,
        scopes=tuple(scopes),
        resource=resource,
        client_name="",
    )
