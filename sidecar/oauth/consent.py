"""Per-client consent before the upstream redirect (MCP authorization spec, Security Best Practices,
"Confused Deputy Problem": "MCP proxy servers using static client IDs MUST obtain user consent for each
dynamically registered client before forwarding to third-party authorization servers").

* The page names the client (the metadata document's host for CIMD clients, else the self-asserted
  registered name, marked as such), the scopes and the exact redirect URI; it is never framed
  (``frame-ancestors 'none'``) and a page without a decision never redirects upstream.
* The browser is identified by a ``__Host-`` cookie per client (name derived from the client id; ``Secure``,
  ``HttpOnly``, ``SameSite=Lax``, ``Path=/``: RFC 6265bis §4.1.3.2 prefix rules), holding 256 random bits.
  The decision is stored server-side per browser and, after login, per user (see below).
  DESIGN §13: the cookie is ``Secure`` even on http loopback (browsers accept that there).
* CSRF: the form carries a single-use consent id and a CSRF token; the store keeps only the token's hash
  and the hash of the browser's cookie, and the POST must present both (compared with
  :func:`hmac.compare_digest`). A forged or missing token is 403 (DESIGN §13); a cross-origin ``Origin``
  is 403 too, and so is ``Origin: null`` (the page sends ``Referrer-Policy: same-origin``, so the genuine
  POST carries our origin). ``SameSite=Lax`` keeps the cookie off cross-site POSTs as a second layer.
* A remembered decision is keyed by browser (or user), client and redirect URI (port-free for loopback IP
  literals), and covers the scopes it was given for.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.audit import record as audit_record
from sidecar.oauth.clients import Client, ascii_url, host_forms, loopback_key
from sidecar.oauth.common import SECRET_BYTES, check_rate, parse_form, read_limited, secure_equal
from sidecar.oauth.context import oauth, store_down, store_of
from sidecar.oauth.errors import AccessDenied, InvalidRequest, Problem
from sidecar.oauth.outcomes import count
from sidecar.oauth.pages import error_page, esc, page
from sidecar.oauth.request import AuthorizationRequest, error_to_client
from sidecar.oauth.upstream import redirect_upstream
from sidecar.store.base import RecordCorrupt, StoreUnavailable, token_hash

log = logging.getLogger("sidecar.oauth.consent")

COOKIE_PREFIX: Final = "__Host-mcpsc-consent-"
# A remembered decision (and the browser cookie that finds it) lasts thirty days, then the page shows again.
CONSENT_TTL_SECONDS: Final = 30 * 86_400
# The user has ten minutes to answer the consent page.
CONSENT_REQUEST_TTL_SECONDS: Final = 600
_CONSENT_KEY_PREFIX: Final = "consent-request:"
# The consent form has three short fields.
MAX_CONSENT_FORM_BYTES: Final = 4096
# What the consent page says for each scope; ``scope_descriptions`` adds to or replaces these. A scope
# without a description is shown by its code.
DEFAULT_SCOPE_DESCRIPTIONS: Final = {
    "openid": "Confirm who you are",
    "profile": "See your name and basic profile information",
    "email": "See your email address",
    "offline_access": "Stay connected when you are not using it, until you disconnect",
}


def scope_lines(scopes: tuple[str, ...], configured: dict[str, str]) -> str:
    """The permission list: a description people understand, the raw scope code beside it (escaped)."""
    descriptions = {**DEFAULT_SCOPE_DESCRIPTIONS, **configured}
    items = []
    for scope in scopes:
        text = descriptions.get(scope)
        if text:
            items.append(f"<li>{esc(text)} <code>{esc(scope)}</code></li>")
        else:
            items.append(f"<li><code>{esc(scope)}</code></li>")
    return "".join(items) or "<li>Connect to this service (no extra permissions)</li>"


def cookie_name(client_id: str) -> str:
    """One cookie per client: the cookie is bound to the client id by its name and by the server record."""
    return COOKIE_PREFIX + hashlib.sha256(client_id.encode("utf-8")).hexdigest()[:20]


def browser_subject(cookie_value: str) -> str:
    """The store's subject for a browser's decision (the cookie itself is never stored)."""
    return "browser:" + token_hash(cookie_value)


def set_consent_cookie(response: web.StreamResponse, client_id: str, value: str) -> None:
    response.set_cookie(
        cookie_name(client_id),
        value,
        max_age=CONSENT_TTL_SECONDS,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
    )


def consent_target(client_id: str, redirect_uri: str) -> str:
    """What a remembered decision is about: the client *and* where its codes go (the redirect URI, port-free
    for loopback IP literals, whose port changes on every login: RFC 8252 §7.3). The store keys consent on a
    hash of the subject and this string; the scopes are stored in the record and must cover the request."""
    return client_id + "\n" + loopback_key(redirect_uri)


async def remembered(
    request: web.Request, client_id: str, redirect_uri: str, scopes: tuple[str, ...], cookie: str | None
) -> bool:
    """True when this browser already allowed ``client_id`` at least these scopes, for this redirect URI."""
    if cookie is None:
        return False
    try:
        allowed = await store_of(request).get_consent(browser_subject(cookie), consent_target(client_id, redirect_uri))
    except StoreUnavailable as exc:
        raise store_down(request, "get_consent", exc) from exc
    except RecordCorrupt:
        return False  # an edited consent record is not a decision (logged by the store): ask again
    return allowed is not None and set(scopes) <= allowed


async def show_page(
    request: web.Request, client: Client, req: AuthorizationRequest, cookie: str | None
) -> web.Response:
    """Render the consent form (200) and remember the pending decision (single use, 10 minutes)."""
    cookie = cookie or secrets.token_urlsafe(SECRET_BYTES)
    consent_id = secrets.token_urlsafe(SECRET_BYTES)
    csrf = secrets.token_urlsafe(SECRET_BYTES)
    payload = {**req.to_payload(), "csrf": token_hash(csrf), "browser": token_hash(cookie)}
    try:
        await store_of(request).put_pending(_CONSENT_KEY_PREFIX + consent_id, payload, ttl=CONSENT_REQUEST_TTL_SECONDS)
    except StoreUnavailable as exc:
        raise store_down(request, "put_pending", exc) from exc
    st = oauth(request)
    if client.kind == "metadata_document":
        # Hosts in ASCII (punycode): a look-alike Unicode spelling is shown only beside it, marked as such.
        ascii_host, unicode_host = host_forms(client.client_id)
        who = f"<strong>{esc(ascii_host)}</strong>"
        if unicode_host is not None:
            who += f" (written in Unicode as &ldquo;{esc(unicode_host)}&rdquo;)"
        if client.client_name:
            who += f" (calls itself &ldquo;{esc(client.client_name)}&rdquo;)"
        verified = "Its identity is the web address <span class=uri>" + esc(ascii_url(client.client_id)) + "</span>."
    else:
        who = f"<strong>{esc(client.display_name())}</strong>"
        verified = "This name was chosen by the application itself and is not verified."
    scope_items = scope_lines(req.scopes, st.settings.scope_descriptions)
    service = f"<strong>{esc(st.settings.display_name)}</strong>" if st.settings.display_name else ""
    address = f"<span class=uri>{esc(st.endpoints.issuer)}</span>"
    target = f"{service} ({address})" if service else f"<strong>{esc(st.endpoints.issuer)}</strong>"
    body = (
        "<h1>Allow access?</h1><div class=box>"
        f"<p>{who} wants to use {target} on your behalf.</p>"
        f"<p class=note>{verified}</p>"
        f"<p>It will be able to:</p><ul class=scopes>{scope_items}</ul>"
        f"<p>After you sign in, you will be sent back to:<br><span class=uri>{esc(req.redirect_uri)}</span></p>"
        "<p class=note>Only allow this if you started connecting this application yourself just now.</p>"
        f'<form method=post action="{esc(st.endpoints.consent)}">'
        f'<input type=hidden name=consent_id value="{esc(consent_id)}">'
        f'<input type=hidden name=csrf_token value="{esc(csrf)}">'
        '<button type=submit name=decision value=approve class=primary autofocus>Allow</button>'
        '<button type=submit name=decision value=deny class=secondary>Deny</button>'
        "</form></div>"
    )
    response = page("Allow access?", body)
    set_consent_cookie(response, client.client_id, cookie)
    return response


def _same_origin(origin: str, issuer: str) -> bool:
    try:
        a, b = urlsplit(origin), urlsplit(issuer)
    except ValueError:
        return False
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


async def handle_post(request: web.Request) -> web.Response:
    """The consent form's POST: check CSRF and the browser, store the decision, redirect upstream (303)."""
    st = oauth(request)
    try:
        check_rate(request, st.limits["consent"])
        origin = request.headers.get("Origin")
        # The page is served with Referrer-Policy: same-origin, so a genuine POST carries our origin;
        # "null" (sandboxed frames, data: URLs, no-referrer pages) is what an attacker's page can send.
        if origin is not None and not _same_origin(origin, st.endpoints.issuer):
            raise AccessDenied("the consent form was submitted from another site")
        body = await read_limited(request, MAX_CONSENT_FORM_BYTES)
        try:
            form = {k: v[0] for k, v in parse_form(body).items() if len(v) == 1} if body is not None else {}
        except UnicodeDecodeError:
            form = {}
        consent_id, csrf, decision = form.get("consent_id"), form.get("csrf_token"), form.get("decision")
        if not isinstance(consent_id, str) or not consent_id:
            raise InvalidRequest("the consent request is missing")
        try:
            record = await store_of(request).take_pending(_CONSENT_KEY_PREFIX + consent_id)
        except StoreUnavailable as exc:
            raise store_down(request, "take_pending", exc) from exc
        except RecordCorrupt:
            record = None
        if record is None:
            raise InvalidRequest("the consent request expired or was already answered; start again from the client")
        req = AuthorizationRequest.from_payload(record)
        # DESIGN §13: "a forged or missing CSRF token is 403".
        if not isinstance(csrf, str) or not csrf or not secure_equal(token_hash(csrf), str(record.get("csrf", ""))):
            log.warning("consent POST with a forged or missing CSRF token", extra={"client_id": req.client_id})
            raise AccessDenied("the consent form's CSRF token is missing or wrong")
        cookie = request.cookies.get(cookie_name(req.client_id))
        if not cookie or not secure_equal(token_hash(cookie), str(record.get("browser", ""))):
            log.warning("consent POST from a browser that did not load the page", extra={"client_id": req.client_id})
            raise AccessDenied("the consent was answered in another browser")
        if decision == "deny":
            count(request, "consent", "denied")
            log.info("consent denied", extra={"client_id": req.client_id})
            audit_record(request.app, "oauth.consent", client_id=req.client_id, scopes=list(req.scopes), outcome="deny",
                   remote=request.remote)
            return error_to_client(
                req.redirect_uri, req.state, AccessDenied("the user denied access"), issuer=st.endpoints.issuer,
                status=303,
            )
        if decision != "approve":
            raise InvalidRequest("the consent decision is missing")
        try:
            await store_of(request).put_consent(
                browser_subject(cookie),
                consent_target(req.client_id, req.redirect_uri),
                req.scopes,
                ttl=CONSENT_TTL_SECONDS,
            )
        except StoreUnavailable as exc:
            raise store_down(request, "put_consent", exc) from exc
        count(request, "consent", "approved")
        log.info("consent given", extra={"client_id": req.client_id, "scopes": " ".join(req.scopes)})
        audit_record(request.app, "oauth.consent", client_id=req.client_id, scopes=list(req.scopes), outcome="approve",
               remote=request.remote)
        return await redirect_upstream(request, req, cookie, status=303)
    except Problem as err:
        count(request, "consent", err)
        return error_page(request, err)
