"""Test identity providers: the real ``oidc-provider-mock`` and an "IdP front" that makes it behave like a
strict production IdP.

``oidc-provider-mock`` (0.3.4, a Flask app built on Authlib) runs in a thread on a free loopback port
(:func:`run_oidc_mock`). It gets several things wrong for our purposes: its refresh grant never rotates,
accepts only ``client_secret_basic``, and ignores the configured lifetime; it does not advertise or enforce
PKCE; it answers 500 to an authorize request without ``scope``; it returns no ``id_token`` on refresh.

:class:`IdPFront`, an aiohttp server placed before it, is what tests point the sidecar at (its URL is the
issuer: the front forwards the ``Host`` header, so the mock names the front in its discovery document and in
the ``iss`` of every ID token). The front

* issues its own single-use refresh tokens mapped to the mock's, invalidates one when it is used and answers
  ``invalid_grant`` on reuse (``rotate_refresh_tokens``; ``False`` imitates an IdP that keeps the token and
  returns none),
* rewrites ``expires_in`` (``access_token_lifetime``, ``refreshed_access_token_lifetime``) and can re-sign
  ID tokens with a chosen lifetime (``id_token_lifetime``, ``refreshed_id_token_lifetime``) using the mock's
  own signing key, so everything verifies against the mock's JWKS; it adds an ``id_token`` to refresh
  answers like Google does (``id_token_on_refresh``),
* counts refresh calls and records every token and authorize request (``token_requests``, ...),
* can be switched down (``set_down("503")`` or ``set_down("hang")``) and back up (``set_up()``),
* accepts ``client_secret_post`` and ``client_secret_basic`` (RFC 6749 §2.3.1 decoding), checks the client's
  credentials, refuses both methods in one request, and talks ``client_secret_basic`` to the mock,
* advertises and enforces PKCE S256 for codes whose authorize request carried a ``code_challenge``.

Other test folders import the fixtures into their ``conftest.py``::

    from tests.support.oidc import idp_front, oidc_mock  # noqa: F401

and drive a login headlessly: ``tokens = await idp_front.obtain_tokens(sub="alice@example.com")``, or, when the
sidecar itself redirected the browser upstream, ``callback = await idp_front.authorize(location, sub=...)``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, quote, quote_plus, unquote_plus, urlencode, urlsplit

import aiohttp
import flask
import jwt
import pytest
import pytest_asyncio
import werkzeug.serving
from aiohttp import web

with warnings.catch_warnings():
    # oidc-provider-mock imports authlib.jose, which warns about its own deprecation on import; authlib
    # installs an "always" filter for that warning when imported, so ours goes in after it.
    import authlib.deprecate  # type: ignore[import-untyped]

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    import oidc_provider_mock

DEFAULT_CLIENT_ID = "mcp-sidecar-test"
# Characters that RFC 6749 §2.3.1 form-urlencoding must carry through Basic authentication intact.
DEFAULT_CLIENT_SECRET = "s3cret with spaces:+/&=%"
DEFAULT_SUB = "alice@example.com"
DEFAULT_SCOPE = "openid email profile"
# Never contacted: the front's helpers stop at the redirect and read the code from its Location.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/callback"
# Lifetime of ID tokens the front mints on refresh when no lifetime is configured (Google's: one hour).
DEFAULT_REFRESHED_ID_TOKEN_LIFETIME = 3600
# How long the front's forwarding to the in-process mock may take before the test fails loudly.
MOCK_FORWARD_TIMEOUT_SECONDS = 10.0

TOKEN_PATH = "/oauth2/token"
REVOKE_PATH = "/front/revoke"
AUTHORIZE_PATH = "/oauth2/authorize"
DISCOVERY_PATH = "/.well-known/openid-configuration"


# --- the mock in a thread ---------------------------------------------------------------------------------


class _QuietHandler(werkzeug.serving.WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class OidcMock:
    """A running oidc-provider-mock. ``private_jwk`` is its signing key (used by the front to re-sign)."""

    base_url: str
    port: int
    private_jwk: dict[str, Any] = field(repr=False)

    @property
    def kid(self) -> str | None:
        kid = self.private_jwk.get("kid")
        return kid if isinstance(kid, str) else None

    def sign(self, claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` as the mock would (RS256, with the key the mock's JWKS publishes)."""
        key = jwt.PyJWK(self.private_jwk).key
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(dict(claims), key, algorithm="RS256", headers=headers)


@contextmanager
def run_oidc_mock(
    *,
    access_token_max_age: timedelta = timedelta(hours=1),
    require_nonce: bool = False,
    users: Sequence[oidc_provider_mock.User] = (),
) -> Iterator[OidcMock]:
    """Run oidc-provider-mock on a free port of 127.0.0.1 in a daemon thread, for the ``with`` block.

    ``access_token_max_age`` covers the access and ID tokens of the code exchange only (refreshed tokens are
    the front's business).
    """
    app = oidc_provider_mock.app(
        require_nonce=require_nonce, access_token_max_age=access_token_max_age, user_claims=users
    )
    # The mock keeps its storage (and signing key) in a closure that its before_request hook publishes on
    # flask.g; run that hook once to reach the key.
    with app.test_request_context("/"):
        app.preprocess_request()
        storage = flask.g.oidc_provider_mock_storage
        private_jwk = dict(storage.jwk.as_dict(is_private=True))
    server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield OidcMock(
            base_url=f"http://127.0.0.1:{server.server_port}", port=server.server_port, private_jwk=private_jwk
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- the front --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequestRecord:
    """One request to the front's token endpoint, as the front saw it (secrets included: it is a test)."""

    grant_type: str | None
    auth_method: Literal["client_secret_basic", "client_secret_post", "none", "both"]
    client_id: str | None
    client_secret: str | None
    authorization: str | None
    form: dict[str, str]


@dataclass(frozen=True)
class IssuedTokens:
    """What :meth:`IdPFront.obtain_tokens` got from a full authorization code flow."""

    access_token: str
    refresh_token: str | None
    id_token: str | None
    expires_in: int | None
    scope: str | None
    nonce: str
    raw: dict[str, Any]


@dataclass
class _Family:
    mock_refresh_token: str
    client_id: str | None
    claims: dict[str, Any]


def _oauth_error(status: int, error: str, description: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status, headers=headers)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class IdPFront:
    """The strict IdP tests talk to. Knobs are plain attributes: set them at any time in a test."""

    def __init__(
        self,
        mock: OidcMock,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        check_client: bool = True,
    ) -> None:
        self.mock = mock
        self.client_id = client_id
        self.client_secret = client_secret
        self.check_client = check_client
        # --- knobs ---
        self.rotate_refresh_tokens = True
        self.issue_refresh_token = True  # False: the code exchange answers without one (offline_access dropped)
        self.access_token_lifetime: int | None = None
        self.refreshed_access_token_lifetime: int | None = None
        self.id_token_lifetime: int | None = None
        self.refreshed_id_token_lifetime: int | None = None
        self.id_token_on_refresh = True
        self.require_pkce = False
        self.forced_token_error: tuple[int, dict[str, Any]] | None = None
        self.discovery_overrides: dict[str, Any] = {}
        # --- records ---
        self.refresh_calls = 0
        self.refresh_successes = 0
        self.refresh_rejections = 0
        self.token_requests: list[TokenRequestRecord] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.revoked: list[str] = []  # tokens revoked at the RFC 7009 endpoint (advertised via discovery_overrides)
        # --- state ---
        self._down: Literal["503", "hang"] | None = None
        self._wake = asyncio.Event()
        self._refresh_tokens: dict[str, _Family] = {}
        self._pkce: dict[str, tuple[str, str]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    # --- lifecycle ---

    @property
    def issuer(self) -> str:
        """The front's base URL: the issuer a sidecar under test is configured with."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_PATH

    @property
    def authorization_endpoint(self) -> str:
        return self.issuer + AUTHORIZE_PATH

    def sidecar_settings(self) -> dict[str, str]:
        """The ``idp_*`` settings that point a sidecar under test at this front."""
        return {"idp_issuer": self.issuer, "idp_client_id": self.client_id, "idp_client_secret": self.client_secret}

    async def start(self) -> None:
        app = web.Application(middlewares=[self._down_middleware])
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post(REVOKE_PATH, self._revoke)
        app.router.add_route("*", AUTHORIZE_PATH, self._authorize)
        app.router.add_route("*", "/{tail:.*}", self._passthrough)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=MOCK_FORWARD_TIMEOUT_SECONDS))
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        address = self._runner.addresses[0]
        self._port = int(address[1])

    async def close(self) -> None:
        self._wake.set()  # release hanging requests
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> IdPFront:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- switches ---

    def set_down(self, mode: Literal["503", "hang"] = "503") -> None:
        """Every endpoint answers 503 (``"503"``) or never answers until :meth:`set_up` (``"hang"``)."""
        self._down = mode
        if mode == "hang":
            self._wake = asyncio.Event()

    def set_up(self) -> None:
        self._down = None
        self._wake.set()

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token the front issued (the user revoked the app)."""
        self._refresh_tokens.clear()

    @property
    def live_refresh_tokens(self) -> int:
        return len(self._refresh_tokens)

    # --- driving a login headlessly ---

    def build_authorize_url(
        self,
        *,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        scope: str = DEFAULT_SCOPE,
        state: str = "state",
        nonce: str | None = None,
        code_challenge: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,  # the mock answers 500 without one
            "state": state,
        }
        if nonce is not None:
            params["nonce"] = nonce
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        params.update(extra or {})
        return f"{self.authorization_endpoint}?{urlencode(params)}"

    async def authorize(
        self, authorize_url: str, *, sub: str = DEFAULT_SUB, session: aiohttp.ClientSession | None = None
    ) -> str:
        """Log ``sub`` in on the mock's authorize page for ``authorize_url`` (as an upstream redirect names it)
        and return the ``Location`` the IdP redirects the browser to (the client's callback with code and
        state). The mock's page is a form POSTed back to the same URL with the field ``sub``.
        """
        http = session or self._http
        async with http.post(authorize_url, data={"sub": sub}, allow_redirects=False) as response:
            if response.status not in (302, 303):
                text = await response.text()
                raise AssertionError(f"the IdP's authorize page answered {response.status}: {text[:300]}")
            return response.headers["Location"]

    async def obtain_tokens(
        self,
        *,
        sub: str = DEFAULT_SUB,
        scope: str = DEFAULT_SCOPE,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        nonce: str | None = None,
        use_pkce: bool = True,
    ) -> IssuedTokens:
        """A complete authorization code flow against the front: real IdP tokens for ``sub``.

        The refresh token is one of the front's rotating ones; the ID token verifies against the mock's JWKS
        with ``iss == self.issuer`` and ``aud == [self.client_id]``.
        """
        state = secrets.token_urlsafe(12)
        nonce = nonce or secrets.token_urlsafe(12)
        verifier = secrets.token_urlsafe(48) if use_pkce else None
        url = self.build_authorize_url(
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=nonce,
            code_challenge=_s256(verifier) if verifier else None,
        )
        location = await self.authorize(url, sub=sub)
        query = parse_qs(urlsplit(location).query)
        if query.get("state") != [state] or "code" not in query:
            raise AssertionError(f"unexpected authorize redirect: {location}")
        form = {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect_uri}
        if verifier:
            form["code_verifier"] = verifier
        user_pass = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}"
        headers = {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}
        async with self._http.post(self.token_endpoint, data=form, headers=headers) as response:
            raw = await response.json()
            if response.status != 200:
                raise AssertionError(f"code exchange failed: {response.status} {raw}")
        return IssuedTokens(
            access_token=raw["access_token"],
            refresh_token=raw.get("refresh_token"),
            id_token=raw.get("id_token"),
            expires_in=raw.get("expires_in"),
            scope=raw.get("scope"),
            nonce=nonce,
            raw=raw,
        )

    # --- handlers ---

    @property
    def _http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the front is not started"
        return self._session

    @web.middleware
    async def _down_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self._down is not None and request.path != TOKEN_PATH:
            return await self._down_answer()
        response: web.StreamResponse = await handler(request)
        return response

    async def _down_answer(self) -> web.Response:
        if self._down == "hang":
            await self._wake.wait()
        return web.json_response(
            {"error": "temporarily_unavailable", "error_description": "the IdP is down"},
            status=503,
            headers={"Retry-After": "1"},
        )

    async def _forward(
        self,
        request: web.Request,
        *,
        body: bytes | Mapping[str, str] | None = None,
        path_qs: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        send_headers = {"Host": request.host}
        for name in ("Content-Type", "Accept", "Authorization"):
            if name in request.headers:
                send_headers[name] = request.headers[name]
        send_headers.update(headers or {})
        if body is None and request.can_read_body:
            body = await request.read()
        async with self._http.request(
            request.method,
            self.mock.base_url + (path_qs if path_qs is not None else request.path_qs),
            data=body,
            headers=send_headers,
            allow_redirects=False,
        ) as response:
            payload = await response.read()
            kept = {
                name: response.headers[name]
                for name in ("Content-Type", "Location", "WWW-Authenticate", "Cache-Control")
                if name in response.headers
            }
            return response.status, kept, payload

    async def _passthrough(self, request: web.Request) -> web.Response:
        status, headers, payload = await self._forward(request)
        return web.Response(status=status, body=payload, headers=headers)

    async def _discovery(self, request: web.Request) -> web.Response:
        status, headers, payload = await self._forward(request)
        if status != 200:
            return web.Response(status=status, body=payload, headers=headers)
        doc = json.loads(payload)
        doc["code_challenge_methods_supported"] = ["S256"]
        doc["token_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]
        doc.update(self.discovery_overrides)
        return web.json_response(doc)

    async def _authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        status, headers, payload = await self._forward(request)
        location = headers.get("Location")
        if status in (302, 303) and location and "code_challenge" in query:
            codes = parse_qs(urlsplit(location).query).get("code")
            if codes:
                self._pkce[codes[0]] = (query["code_challenge"], query.get("code_challenge_method", "plain"))
        return web.Response(status=status, body=payload, headers=headers)

    def _client_auth(
        self, request: web.Request, form: Mapping[str, str]
    ) -> tuple[Literal["client_secret_basic", "client_secret_post", "none", "both"], str | None, str | None]:
        header = request.headers.get("Authorization")
        basic: tuple[str, str] | None = None
        if header and header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
                user, _, password = decoded.partition(":")
                # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
                basic = (unquote_plus(user), unquote_plus(password))
            except ValueError:
                basic = ("", "")
        posted = "client_secret" in form
        if basic and posted:
            return "both", basic[0], basic[1]
        if basic:
            return "client_secret_basic", basic[0], basic[1]
        if posted:
            return "client_secret_post", form.get("client_id"), form.get("client_secret")
        return "none", form.get("client_id"), None

    @property
    def revocation_endpoint(self) -> str:
        return self.issuer + REVOKE_PATH

    async def _revoke(self, request: web.Request) -> web.Response:
        """RFC 7009: client-authenticated; a refresh token of ours stops working; unknown tokens are 200 too."""
        form = {key: str(value) for key, value in (await request.post()).items()}
        _, client_id, client_secret = self._client_auth(request, form)
        if self.check_client and (client_id != self.client_id or client_secret != self.client_secret):
            return _oauth_error(401, "invalid_client", "client authentication failed")
        token = form.get("token", "")
        self.revoked.append(token)
        self._refresh_tokens.pop(token, None)
        return web.Response(status=200)

    async def _token(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        grant_type = form.get("grant_type")
        method, client_id, client_secret = self._client_auth(request, form)
        self.token_requests.append(
            TokenRequestRecord(
                grant_type=grant_type,
                auth_method=method,
                client_id=client_id,
                client_secret=client_secret,
                authorization=request.headers.get("Authorization"),
                form=dict(form),
            )
        )
        if grant_type == "refresh_token":
            self.refresh_calls += 1
        if self._down is not None:
            return await self._down_answer()
        if method == "both":
            # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each request."
            return _oauth_error(400, "invalid_request", "more than one client authentication method")
        if self.check_client and (client_id != self.client_id or client_secret != self.client_secret):
            return _oauth_error(
                401, "invalid_client", "client authentication failed", **{"WWW-Authenticate": 'Basic realm="idp-front"'}
            )
        if self.forced_token_error is not None:
            status, body = self.forced_token_error
            return web.json_response(body, status=status)
        mock_form = {k: v for k, v in form.items() if k not in ("client_id", "client_secret", "code_verifier")}
        mock_auth = {
            "Authorization": "Basic "
            + base64.b64encode(
                f"{quote(client_id or '', safe='')}:{quote(client_secret or '', safe='')}".encode()
            ).decode()
        }
        if grant_type == "authorization_code":
            return await self._code_grant(request, form, mock_form, mock_auth, client_id)
        if grant_type == "refresh_token":
            return await self._refresh_grant(request, form, mock_form, mock_auth, client_id)
        status, headers, payload = await self._forward(
            request, body=mock_form, headers=mock_auth | {"Content-Type": "application/x-www-form-urlencoded"}
        )
        return web.Response(status=status, body=payload, headers=headers)

    async def _code_grant(
        self,
        request: web.Request,
        form: Mapping[str, str],
        mock_form: dict[str, str],
        mock_auth: dict[str, str],
        client_id: str | None,
    ) -> web.Response:
        challenge = self._pkce.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier")
        if challenge is not None:
            expected, method = challenge
            computed = _s256(verifier) if verifier and method == "S256" else verifier
            # RFC 7636 §4.6: the server compares the transformed verifier with the stored challenge.
            if computed != expected:
                return _oauth_error(400, "invalid_grant", "PKCE verification failed")
        elif self.require_pkce:
            return _oauth_error(400, "invalid_grant", "PKCE is required")
        status, headers, payload = await self._forward(
            request, body=mock_form, headers=mock_auth | {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 200:
            return web.Response(status=status, body=payload, headers=headers)
        data = json.loads(payload)
        claims: dict[str, Any] = {}
        if isinstance(data.get("id_token"), str):
            claims = jwt.decode(data["id_token"], options={"verify_signature": False})
            if self.id_token_lifetime is not None:
                data["id_token"] = self.mock.sign(self._restamp(claims, self.id_token_lifetime))
        mock_refresh = data.pop("refresh_token", None)
        if isinstance(mock_refresh, str) and self.issue_refresh_token:
            data["refresh_token"] = self._issue_refresh_token(_Family(mock_refresh, client_id, claims))
        if self.access_token_lifetime is not None:
            data["expires_in"] = self.access_token_lifetime
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    async def _refresh_grant(
        self,
        request: web.Request,
        form: Mapping[str, str],
        mock_form: dict[str, str],
        mock_auth: dict[str, str],
        client_id: str | None,
    ) -> web.Response:
        presented = form.get("refresh_token", "")
        family = self._refresh_tokens.get(presented)
        if family is None or family.client_id != client_id:
            self.refresh_rejections += 1
            return _oauth_error(400, "invalid_grant", "the refresh token is invalid, revoked or already used")
        if self.rotate_refresh_tokens:
            del self._refresh_tokens[presented]  # single use, before any await
        mock_form["refresh_token"] = family.mock_refresh_token
        status, headers, payload = await self._forward(
            request, body=mock_form, headers=mock_auth | {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status != 200:
            if self.rotate_refresh_tokens:
                self._refresh_tokens[presented] = family  # a failed refresh does not spend the token
            return web.Response(status=status, body=payload, headers=headers)
        data = json.loads(payload)
        data.pop("refresh_token", None)
        if self.rotate_refresh_tokens:
            data["refresh_token"] = self._issue_refresh_token(family)
        lifetime = self.refreshed_access_token_lifetime
        if lifetime is None:
            lifetime = self.access_token_lifetime
        if lifetime is not None:
            data["expires_in"] = lifetime
        if self.id_token_on_refresh and family.claims:
            id_lifetime = self.refreshed_id_token_lifetime or self.id_token_lifetime
            claims = self._restamp(family.claims, id_lifetime or DEFAULT_REFRESHED_ID_TOKEN_LIFETIME)
            # OIDC Core §12.2: a refreshed ID token SHOULD NOT carry a nonce.
            claims.pop("nonce", None)
            claims.pop("at_hash", None)
            data["id_token"] = self.mock.sign(claims)
        self.refresh_successes += 1
        return web.json_response(data, headers={"Cache-Control": "no-store"})

    def _issue_refresh_token(self, family: _Family) -> str:
        token = "frt_" + secrets.token_urlsafe(24)
        self._refresh_tokens[token] = family
        return token

    @staticmethod
    def _restamp(claims: Mapping[str, Any], lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        return {**claims, "iat": now, "exp": now + lifetime}


# --- fixtures (import them into a conftest.py) ------------------------------------------------------------


@pytest.fixture(scope="session")
def oidc_mock() -> Iterator[OidcMock]:
    """One oidc-provider-mock for the session (its state is per-user and harmless to share)."""
    with run_oidc_mock() as mock:
        yield mock


@pytest_asyncio.fixture
async def idp_front(oidc_mock: OidcMock) -> AsyncIterator[IdPFront]:
    """A fresh IdP front (own refresh tokens, counters and switches) before the session's mock."""
    async with IdPFront(oidc_mock) as front:
        yield front
