"""The client for one upstream OpenID provider's endpoints (broker mode), on the caller's ``aiohttp.ClientSession``.

* RFC 6749 §2.3.1: client authentication, ``client_secret_basic`` (id and secret form-urlencoded before
  base64) or ``client_secret_post`` (both in the body), never both in one request.
* RFC 6749 §4.1.3 (with RFC 7636 §4.5 ``code_verifier``): :meth:`IdPClient.exchange_code`.
* RFC 6749 §6: :meth:`IdPClient.refresh`. When the response carries no ``refresh_token`` the returned
  :class:`TokenSet` has ``refresh_token=None``: the caller keeps the refresh token it already holds
  (RFC 6749 §6 lets the server keep the old one valid; design §7.3).
* RFC 6749 §5.1 / §5.2: success and error responses. camelCase field names (``accessToken``, ...) are
  accepted with a warning, since some IdPs send them. ``error_description`` is sanitized by
  :func:`sanitize_description` before it is kept, logged or shown.
* RFC 7009 (:meth:`IdPClient.revoke`) and OIDC Core §5.3 (:meth:`IdPClient.userinfo`).

Discovery (``sidecar.idp.discovery``) and ID token verification (``sidecar.idp.id_token``) are the client's
parts; HTTP goes through ``sidecar.idp.transport``. Token values are never logged and never appear in a repr.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import aiohttp
import jwt

from sidecar.idp.discovery import Discovery
from sidecar.idp.errors import IdPError, IdPMisconfigured, IdPRejected, IdPUnavailable, sanitize_description
from sidecar.idp.id_token import DEFAULT_ID_TOKEN_LEEWAY_SECONDS, IdTokenVerifier
from sidecar.idp.transport import DEFAULT_IDP_TIMEOUT_SECONDS, HttpAnswer, IdPTransport
from sidecar.idp.values import ExpirySource, ProviderMetadata, TokenAuthMethod, TokenSet

if TYPE_CHECKING:
    from sidecar.config import Settings

log = logging.getLogger("sidecar.idp")

# RFC 6749 §2.3.1: servers MUST support HTTP Basic; it is the safe default.
DEFAULT_CLIENT_AUTH: TokenAuthMethod = "client_secret_basic"
_BEARER = "Bearer"
# A token response without ``expires_in`` and with an opaque access token: assume this short lifetime, so
# the token is refreshed early rather than forwarded after the IdP already considers it expired (five
# minutes is the shortest access-token lifetime the common IdPs allow to be configured).
DEFAULT_EXPIRES_IN_SECONDS = 300
# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E )
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}")
_CAMEL_FIELDS = {
    "access_token": "accessToken",
    "refresh_token": "refreshToken",
    "expires_in": "expiresIn",
    "id_token": "idToken",
    "token_type": "tokenType",
}


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value for ``client_secret_basic``.

    RFC 6749 §2.3.1: "The client identifier is encoded using the application/x-www-form-urlencoded encoding
    algorithm per Appendix B, and the encoded value is used as the username; the client password is encoded
    using the same algorithm and used as the password."
    """
    user_pass = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(user_pass.encode("utf-8")).decode("ascii")


def _jwt_exp(token: str) -> int | None:
    """The ``exp`` of a JWT access token, read without verification (only used as a lifetime hint)."""
    if token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return int(exp)


class IdPClient:
    """OIDC client for one upstream provider. Cheap to create; share one per process (it holds caches).

    ``session`` belongs to the caller (created in the app's ``cleanup_ctx``); this class never closes it.
    ``clock`` is wall-clock time (token expiries), ``monotonic`` measures cache ages; both are injectable.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        token_auth_method: TokenAuthMethod = DEFAULT_CLIENT_AUTH,
        timeout: float = DEFAULT_IDP_TIMEOUT_SECONDS,
        leeway: float = DEFAULT_ID_TOKEN_LEEWAY_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuer = issuer
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_method: TokenAuthMethod = token_auth_method
        self._clock = clock
        self._transport = IdPTransport(session, timeout=timeout)
        self._discovery = Discovery(self._transport, issuer, monotonic=monotonic)
        self._id_tokens = IdTokenVerifier(
            session,
            self._discovery,
            issuer=issuer,
            client_id=client_id,
            leeway=leeway,
            timeout=timeout,
            monotonic=monotonic,
        )

    @classmethod
    def from_settings(cls, settings: Settings, session: aiohttp.ClientSession) -> IdPClient:
        """Build the client from the broker settings (``idp_*`` keys, ``leeway_seconds``)."""
        if settings.idp_issuer is None or settings.idp_client_id is None or settings.idp_client_secret is None:
            raise ValueError("idp_issuer, idp_client_id and idp_client_secret are required in broker mode")
        return cls(
            session,
            issuer=settings.idp_issuer,
            client_id=settings.idp_client_id,
            client_secret=settings.idp_client_secret.get_secret_value(),
            token_auth_method=settings.idp_token_auth_method,
            timeout=settings.idp_timeout_seconds,
            leeway=settings.leeway_seconds,
        )

    def __repr__(self) -> str:
        return (
            f"IdPClient(issuer={self._issuer!r}, client_id={self._client_id!r}, client_secret='***', "
            f"token_auth_method={self._auth_method!r})"
        )

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def client_id(self) -> str:
        return self._client_id

    async def discover(self) -> ProviderMetadata:
        """The provider metadata, cached (see ``sidecar.idp.discovery``).

        When a refetch fails with :class:`IdPUnavailable` and an older document is cached, the older one is
        used (and the failure logged): endpoints rarely move, an outage of the discovery URL should not
        stop refreshes.
        """
        return await self._discovery.get()

    async def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict[str, Any]:
        """Verify an ID token (OIDC Core §3.1.3.7) and return its claims; raises :class:`IdTokenInvalid`.

        May raise :class:`IdPUnavailable` when the key set cannot be fetched.
        """
        return await self._id_tokens.verify(id_token, nonce)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The UserInfo endpoint's claims (a JSON answer; OIDC Core §5.3.2). The caller checks ``sub``.

        Raises :class:`IdPUnavailable` (or :class:`IdPMisconfigured` when the IdP names no endpoint).
        """
        metadata = await self.discover()
        if metadata.userinfo_endpoint is None:
            raise IdPMisconfigured("the IdP's discovery document names no userinfo_endpoint")
        # The bearer token is never carried along a redirect.
        answer = await self._transport.send(
            "GET", metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"},
            follow_redirects=False,
        )
        if answer.status != 200:
            raise IdPUnavailable("the IdP's userinfo endpoint failed", status=answer.status)
        return self._transport.json_object(answer, "userinfo")

    # --- token endpoint (RFC 6749 §4.1.3, §6) ---

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str | None) -> TokenSet:
        """Redeem an authorization code (RFC 6749 §4.1.3, PKCE RFC 7636 §4.5).

        The returned ``id_token`` is not verified here: call :meth:`verify_id_token` with the request's nonce.
        """
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier is not None:
            form["code_verifier"] = code_verifier
        return await self._token_request(form)

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> TokenSet:
        """Use a refresh token (RFC 6749 §6). No retry: a rotating IdP has already spent the token.

        ``TokenSet.refresh_token`` is ``None`` when the IdP issued no new one; the caller then keeps
        ``refresh_token``. Otherwise RFC 6749 §6 applies to the caller: "the client MUST discard the old
        refresh token and replace it with the new refresh token". Raises :class:`IdPRejected` or
        :class:`IdPUnavailable`.
        """
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope is not None:
            form["scope"] = scope
        return await self._token_request(form)

    async def revoke(self, token: str, token_type_hint: str = "refresh_token") -> bool:
        """RFC 7009 §2.1 at the IdP's ``revocation_endpoint`` (admin revocation). ``False`` when the IdP has none.

        §2.2: "The authorization server responds with HTTP status code 200 if the token has been revoked
        successfully or if the client submitted an invalid token". Raises :class:`IdPUnavailable` otherwise.
        """
        metadata = await self.discover()
        if not metadata.revocation_endpoint:
            return False
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        body = {"token": token, "token_type_hint": token_type_hint}
        if self._auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(self._client_id, self._client_secret)
        else:
            body["client_id"] = self._client_id
            body["client_secret"] = self._client_secret
        answer = await self._transport.send("POST", metadata.revocation_endpoint, data=body, headers=headers)
        if answer.status != 200:
            raise IdPUnavailable("the IdP's revocation endpoint refused the request", status=answer.status)
        return True

    async def _token_request(self, form: dict[str, str]) -> TokenSet:
        metadata = await self.discover()
        grant_type = form["grant_type"]
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        body = dict(form)
        # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each request."
        if self._auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(self._client_id, self._client_secret)
        else:
            body["client_id"] = self._client_id
            body["client_secret"] = self._client_secret
        # RFC 6749 §3.2: "The client MUST use the HTTP POST method when making access token requests."
        answer = await self._transport.send("POST", metadata.token_endpoint, data=body, headers=headers)
        if 200 <= answer.status < 300:
            doc = self._transport.json_object(answer, "token")
            if "error" in doc and "access_token" not in doc and "accessToken" not in doc:
                # Some IdPs (GitHub among them) answer errors with 200; RFC 6749 §5.2 says 400.
                raise self._token_error(answer, grant_type, doc)
            return self._parse_token_response(doc, grant_type)
        raise self._token_error(answer, grant_type)

    def _token_error(self, answer: HttpAnswer, grant_type: str, doc: object = None) -> IdPError:
        status = answer.status
        if status >= 500 or status == 429 or status == 408:
            log.warning("idp token endpoint unavailable: grant_type=%s status=%d", grant_type, status)
            return IdPUnavailable("the IdP's token endpoint failed", status=status, retry_after=answer.retry_after)
        if doc is None:
            try:
                doc = json.loads(answer.body)
            except (ValueError, UnicodeDecodeError, RecursionError):
                doc = None
        error = doc.get("error") if isinstance(doc, dict) else None
        oauth_status = 400 <= status < 500 or 200 <= status < 300
        if oauth_status and isinstance(error, str) and _ERROR_CODE.fullmatch(error):
            assert isinstance(doc, dict)
            description = sanitize_description(doc.get("error_description"))
            log.warning(
                "idp rejected the token request: grant_type=%s status=%d error=%s description=%s",
                grant_type,
                status,
                error,
                description,
            )
            return IdPRejected(error, description, status=status)
        log.warning("idp token endpoint gave no OAuth answer: grant_type=%s status=%d", grant_type, status)
        return IdPUnavailable("the IdP's token endpoint gave no OAuth answer", status=status)

    def _parse_token_response(self, doc: dict[str, Any], grant_type: str) -> TokenSet:
        camel = [camel for snake, camel in _CAMEL_FIELDS.items() if snake not in doc and camel in doc]
        if camel:
            log.warning(
                "idp token response uses non-standard camelCase fields %s (RFC 6749 §5.1 uses snake_case)",
                ",".join(camel),
            )

        def field(name: str) -> Any:
            return doc[name] if name in doc else doc.get(_CAMEL_FIELDS[name])

        access_token = field("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise IdPUnavailable("the IdP's token response has no access_token")
        token_type = field("token_type")
        if token_type is None:
            token_type = _BEARER  # REQUIRED by RFC 6749 §5.1, but some IdPs omit it
        # RFC 6749 §7.1: "The client MUST NOT use an access token if it does not understand the token type."
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise IdPUnavailable("the IdP issued a token type other than Bearer")

        now = self._clock()
        source: ExpirySource
        expires_in = self._expires_in(field("expires_in"))
        if expires_in is not None:
            source, expires_at = "response", now + expires_in
        else:
            exp = _jwt_exp(access_token)
            if exp is not None:
                source, expires_at = "jwt", float(exp)
                expires_in = max(0, int(exp - now))
            else:
                source, expires_in = "default", DEFAULT_EXPIRES_IN_SECONDS
                expires_at = now + expires_in
                log.info(
                    "idp token response has no expires_in and an opaque access token: assuming %d s",
                    DEFAULT_EXPIRES_IN_SECONDS,
                )

        refresh_token = field("refresh_token")
        id_token = field("id_token")
        scope = doc.get("scope")
        if isinstance(scope, list):
            scope = " ".join(s for s in scope if isinstance(s, str))
        log.debug(
            "idp token response: grant_type=%s expires_in=%d source=%s refresh_token=%s id_token=%s",
            grant_type,
            expires_in,
            source,
            "new" if refresh_token else "none",
            "yes" if id_token else "no",
        )
        return TokenSet(
            access_token=access_token,
            token_type=_BEARER,
            expires_in=expires_in,
            expires_at=expires_at,
            expires_in_source=source,
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            scope=scope if isinstance(scope, str) else None,
        )

    @staticmethod
    def _expires_in(value: object) -> int | None:
        # RFC 6749 §5.1 says a number; some IdPs send a numeric string.
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return None
        if isinstance(value, int | float) and value == value:  # not NaN
            return max(0, int(value))
        return None
