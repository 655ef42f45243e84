"""Client for the upstream OpenID Connect provider (broker mode), on the caller's ``aiohttp.ClientSession``.

What it implements, and where:

* OpenID Connect Discovery 1.0 §4: the provider metadata is read from
  ``<issuer>/.well-known/openid-configuration`` (§4.1, a terminating ``/`` removed first) and its ``issuer``
  must equal the configured issuer exactly (§4.3). Cached for ``DISCOVERY_CACHE_SECONDS``.
* RFC 7517 §5 / OIDC Core §10.1.1: the provider's JWK Set is fetched from ``jwks_uri``, cached, and refetched
  when a token names an unknown ``kid``, at most once per ``JWKS_REFETCH_MIN_INTERVAL_SECONDS``.
* RFC 6749 §2.3.1: client authentication, ``client_secret_basic`` (id and secret form-urlencoded before
  base64) or ``client_secret_post`` (both in the body), never both in one request.
* RFC 6749 §4.1.3 (with RFC 7636 §4.5 ``code_verifier``): :meth:`IdPClient.exchange_code`.
* RFC 6749 §6: :meth:`IdPClient.refresh`. When the response carries no ``refresh_token`` the returned
  :class:`TokenSet` has ``refresh_token=None``: the caller keeps the refresh token it already holds
  (RFC 6749 §6 lets the server keep the old one valid; design §7.3).
* RFC 6749 §5.1 / §5.2: success and error responses. camelCase field names (``accessToken``, ...) are
  accepted with a warning, since some IdPs send them. ``error_description`` is sanitized by
  :func:`sanitize_description` before it is kept, logged or shown.
* OIDC Core §3.1.3.7: :meth:`IdPClient.verify_id_token` (signature from the JWKS, ``iss``, ``aud``/``azp``,
  ``exp`` with leeway, ``nonce`` when one was sent).

Errors are typed: :class:`IdPRejected` (an OAuth error answer from the IdP; on ``invalid_grant`` or
``invalid_client`` the caller drops the upstream credentials and asks for re-authorization),
:class:`IdPUnavailable` (timeouts, connection errors, 5xx, 429, bodies that are not OAuth JSON: the caller
keeps everything and answers 503), :class:`IdPMisconfigured` (an ``IdPUnavailable`` that will not heal by
itself, such as an issuer mismatch) and :class:`IdTokenInvalid`. aiohttp's exceptions are translated in
exactly one place, :meth:`IdPClient._send`. Token values are never logged and never appear in a repr.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote_plus

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from sidecar.bounded import BodyTooLarge, read_bounded

if TYPE_CHECKING:
    from sidecar.config import Settings

log = logging.getLogger("sidecar.idp")

TokenAuthMethod = Literal["client_secret_basic", "client_secret_post"]
ExpirySource = Literal["response", "jwt", "default"]
# RFC 6749 §2.3.1: servers MUST support HTTP Basic; it is the safe default.
DEFAULT_CLIENT_AUTH: TokenAuthMethod = "client_secret_basic"
_BEARER = "Bearer"

# The IdP answers a token request within a few hundred milliseconds when healthy; ten seconds covers a slow
# IdP without holding an MCP request (and the refresh lock, which must outlive it) for much longer.
# Matches the default of the ``idp_timeout_seconds`` setting.
DEFAULT_IDP_TIMEOUT_SECONDS = 10.0
# Provider metadata changes on the scale of releases; an hour keeps a moved endpoint from sticking for long.
DISCOVERY_CACHE_SECONDS = 3600.0
# After a failed refetch the cached metadata is used for this long before the next attempt, so an outage of
# the discovery URL costs one request a minute, not one per token request.
DISCOVERY_RETRY_SECONDS = 60.0
# Providers publish a new signing key well before using it; an hour-old key set is fresh enough, and an
# unknown ``kid`` triggers an early refetch anyway.
JWKS_CACHE_SECONDS = 3600.0
# An unknown ``kid`` refetches the key set at most this often, so tokens with made-up ``kid``s cannot turn
# into a flood of requests to the IdP.
JWKS_REFETCH_MIN_INTERVAL_SECONDS = 60.0
# Clock skew allowed between the IdP and us when checking ``exp``/``iat`` of an ID token.
DEFAULT_ID_TOKEN_LEEWAY_SECONDS = 60.0
# A token response without ``expires_in`` and with an opaque access token: assume this short lifetime, so
# the token is refreshed early rather than forwarded after the IdP already considers it expired (five
# minutes is the shortest access-token lifetime the common IdPs allow to be configured).
DEFAULT_EXPIRES_IN_SECONDS = 300
# A discovery document, key set or token response is a few kilobytes; refuse to buffer more than this.
MAX_RESPONSE_BYTES = 1024 * 1024
# RFC 6749 §5.2 leaves ``error_description`` unbounded; we keep at most this many UTF-8 bytes of it.
MAX_DESCRIPTION_BYTES = 120

# RFC 8725 §3.1: "Libraries MUST enable the caller to specify a supported set of algorithms and MUST NOT
# use any other algorithms": asymmetric algorithms only (never ``none``, never HMAC with a public key).
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)
# RFC 9864 §2.2: "Ed25519" is the fully specified form of EdDSA over Ed25519 (panva's oidc-provider
# advertises it). PyJWT knows only "EdDSA": this decoder also knows "Ed25519", and verify_id_token accepts it
# only with an Ed25519 key (never Ed448).
_DECODER = jwt.PyJWT()
_DECODER._jws.register_algorithm("Ed25519", OKPAlgorithm())
# OIDC Core §2: these ID token claims are REQUIRED.
_REQUIRED_ID_TOKEN_CLAIMS = ["iss", "sub", "aud", "exp", "iat"]
# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E )
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}")
# Unicode categories removed from IdP text: controls (C0, DEL, C1), format characters (bidi overrides,
# zero-width), line and paragraph separators. They could forge log lines or hide text.
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
_CAMEL_FIELDS = {
    "access_token": "accessToken",
    "refresh_token": "refreshToken",
    "expires_in": "expiresIn",
    "id_token": "idToken",
    "token_type": "tokenType",
}
_USER_AGENT = "mcp-auth-sidecar"


# --- errors -----------------------------------------------------------------------------------------------


class IdPError(Exception):
    """Base of every error this module raises."""


class IdPRejected(IdPError):
    """The IdP answered with an OAuth error (RFC 6749 §5.2), e.g. ``invalid_grant``.

    ``description`` is already sanitized. When :attr:`drops_credentials` is true the stored upstream
    credentials are dead (revoked, expired, reused or the client itself is refused): drop them and ask the
    user to re-authorize (design §7.4).
    """

    def __init__(self, error: str, description: str | None = None, *, status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}" if description else error)

    @property
    def drops_credentials(self) -> bool:
        return self.error in ("invalid_grant", "invalid_client")


class IdPUnavailable(IdPError):
    """The IdP could not give a usable answer now: timeout, connection error, 5xx, 429, a non-JSON body.

    Transient by nature: keep every credential, forward a still-valid token or answer 503 (design §7.4).
    ``retry_after`` carries the IdP's ``Retry-After`` seconds when it sent one.
    """

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason if status is None else f"{reason} (HTTP {status})")


class IdPMisconfigured(IdPUnavailable):
    """The IdP answers, but not as configured (issuer mismatch, metadata without a token endpoint, ...).

    Handled like :class:`IdPUnavailable` on the request path (nothing is dropped), but it will not heal by
    waiting: an operator has to fix the configuration.
    """


class IdTokenInvalid(IdPError):
    """An ID token failed verification (OIDC Core §3.1.3.7). ``reason`` is short and safe to log; ``kind`` is
    the typed reason for metrics (``expired`` or ``bad_signature``), never derived from the message."""

    def __init__(self, reason: str, *, kind: Literal["expired", "bad_signature"] = "bad_signature") -> None:
        self.reason = reason
        self.kind: Literal["expired", "bad_signature"] = kind
        super().__init__(reason)


# --- values -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A successful token response (RFC 6749 §5.1), normalized.

    ``refresh_token`` is ``None`` when the IdP returned none: the caller keeps the refresh token it sent
    (RFC 6749 §6, design §7.3). ``expires_at`` is wall-clock epoch seconds; ``expires_in_source`` says
    where the lifetime came from: the response, the access token's own ``exp`` claim, or
    ``DEFAULT_EXPIRES_IN_SECONDS``. Token values never appear in the repr.
    """

    access_token: str
    token_type: str
    expires_in: int
    expires_at: float
    expires_in_source: ExpirySource
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token='***', token_type={self.token_type!r}, expires_in={self.expires_in}, "
            f"expires_in_source={self.expires_in_source!r}, "
            f"refresh_token={'***' if self.refresh_token else None}, "
            f"id_token={'***' if self.id_token else None}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The fields of the discovery document (OIDC Discovery §3) the sidecar uses."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    end_session_endpoint: str | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    id_token_signing_alg_values_supported: tuple[str, ...] = ()


class UpstreamIdP(Protocol):
    """The narrow seam the refresh engine and the OAuth endpoints depend on (fakes implement it in tests)."""

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> TokenSet: ...

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str | None) -> TokenSet: ...

    async def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _SigningKey:
    jwk: jwt.PyJWK
    alg: str | None  # the JWK's own "alg", when it declares one


@dataclass(frozen=True, slots=True)
class _HttpAnswer:
    status: int
    body: bytes
    retry_after: float | None


# --- helpers ----------------------------------------------------------------------------------------------


def sanitize_description(value: object) -> str | None:
    """Make an IdP-supplied ``error_description`` safe to log and to return to a client.

    Control, format and separator characters are removed (whitespace ones become a space, runs of spaces
    collapse), and the text is cut to at most ``MAX_DESCRIPTION_BYTES`` bytes of UTF-8 without splitting a
    character. Anything that is not a string, or nothing left, gives ``None``.
    """
    if not isinstance(value, str):
        return None
    kept: list[str] = []
    for char in value:
        if unicodedata.category(char) in _STRIPPED_CATEGORIES:
            if char.isspace():
                kept.append(" ")
            continue
        kept.append(char)
    text = " ".join("".join(kept).split())
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_DESCRIPTION_BYTES:
        # "ignore" drops the trailing partial multi-byte sequence the cut may leave.
        text = encoded[:MAX_DESCRIPTION_BYTES].decode("utf-8", "ignore").rstrip()
    return text or None


def basic_authorization(client_id: str, client_secret: str) -> str:
    """The ``Authorization`` header value for ``client_secret_basic``.

    RFC 6749 §2.3.1: "The client identifier is encoded using the application/x-www-form-urlencoded encoding
    algorithm per Appendix B, and the encoded value is used as the username; the client password is encoded
    using the same algorithm and used as the password."
    """
    user_pass = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(user_pass.encode("utf-8")).decode("ascii")


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: not worth parsing for a hint
    return seconds if seconds >= 0 else None


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


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


# --- the client -------------------------------------------------------------------------------------------


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
        self._session = session
        self._issuer = issuer
        self._client_id = client_id
        self._client_secret = client_secret
        self._auth_method: TokenAuthMethod = token_auth_method
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_seconds = timeout
        self._leeway = leeway
        self._clock = clock
        self._monotonic = monotonic
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._metadata_lock = asyncio.Lock()
        self._keys: dict[str | None, _SigningKey] = {}
        self._keys_at: float | None = None
        self._keys_lock = asyncio.Lock()

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

    # --- discovery (OIDC Discovery §4) ---

    async def discover(self) -> ProviderMetadata:
        """The provider metadata, cached for ``DISCOVERY_CACHE_SECONDS``.

        When a refetch fails with :class:`IdPUnavailable` and an older document is cached, the older one is
        used (and the failure logged): endpoints rarely move, an outage of the discovery URL should not
        stop refreshes.
        """
        if self._metadata is not None and self._monotonic() - self._metadata_at < DISCOVERY_CACHE_SECONDS:
            return self._metadata
        async with self._metadata_lock:
            if self._metadata is not None and self._monotonic() - self._metadata_at < DISCOVERY_CACHE_SECONDS:
                return self._metadata
            try:
                metadata = await self._fetch_metadata()
            except IdPMisconfigured:
                raise
            except IdPUnavailable as exc:
                if self._metadata is None:
                    raise
                log.warning("idp discovery refetch failed, using the cached metadata: %s", exc)
                self._metadata_at = self._monotonic() - DISCOVERY_CACHE_SECONDS + DISCOVERY_RETRY_SECONDS
                return self._metadata
            self._metadata, self._metadata_at = metadata, self._monotonic()
            return metadata

    async def _fetch_metadata(self) -> ProviderMetadata:
        # OIDC Discovery §4.1: "If the Issuer value contains a path component, any terminating / MUST be
        # removed before appending /.well-known/openid-configuration."
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url, "discovery")
        # OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL that was used as
        # the prefix to /.well-known/openid-configuration to retrieve the configuration information."
        if doc.get("issuer") != self._issuer:
            shown = doc.get("issuer")
            raise IdPMisconfigured(
                f"the discovery document names issuer {sanitize_description(str(shown))!r}, "
                f"not the configured {self._issuer!r} (they must be identical)"
            )
        token_endpoint = _optional_str(doc, "token_endpoint")
        jwks_uri = _optional_str(doc, "jwks_uri")
        if token_endpoint is None or jwks_uri is None:
            raise IdPMisconfigured("the discovery document lacks token_endpoint or jwks_uri")
        return ProviderMetadata(
            issuer=self._issuer,
            token_endpoint=token_endpoint,
            jwks_uri=jwks_uri,
            authorization_endpoint=_optional_str(doc, "authorization_endpoint"),
            userinfo_endpoint=_optional_str(doc, "userinfo_endpoint"),
            revocation_endpoint=_optional_str(doc, "revocation_endpoint"),
            end_session_endpoint=_optional_str(doc, "end_session_endpoint"),
            code_challenge_methods_supported=_str_tuple(doc.get("code_challenge_methods_supported")),
            token_endpoint_auth_methods_supported=_str_tuple(doc.get("token_endpoint_auth_methods_supported")),
            id_token_signing_alg_values_supported=_str_tuple(doc.get("id_token_signing_alg_values_supported")),
        )

    # --- keys (RFC 7517 §5) ---

    async def _signing_key(self, kid: str | None) -> _SigningKey:
        now = self._monotonic()
        if self._keys_at is None or now - self._keys_at >= JWKS_CACHE_SECONDS:
            try:
                await self._refresh_keys(expected_at=self._keys_at)
            except IdPUnavailable as exc:
                if not self._keys:
                    raise
                log.warning("idp key set refetch failed, using the cached keys: %s", exc)
        key = self._pick_key(kid)
        fetched_at = self._keys_at
        if key is None and fetched_at is not None and now - fetched_at >= JWKS_REFETCH_MIN_INTERVAL_SECONDS:
            # An unknown kid may be a freshly rotated key: refetch, rate-limited.
            await self._refresh_keys(expected_at=self._keys_at)
            key = self._pick_key(kid)
        if key is None:
            raise IdTokenInvalid("no key in the IdP's key set matches the token's kid")
        return key

    def _pick_key(self, kid: str | None) -> _SigningKey | None:
        if kid is not None:
            return self._keys.get(kid)
        # OIDC Core §10.1: "If there are multiple keys in the referenced JWK Set document, a kid value MUST
        # be provided in the JOSE Header." Without one we only accept a set holding a single key.
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    async def _refresh_keys(self, *, expected_at: float | None) -> None:
        async with self._keys_lock:
            if self._keys_at != expected_at:
                return  # another task fetched while we waited for the lock
            metadata = await self.discover()
            doc = await self._get_json(metadata.jwks_uri, "jwks")
            raw_keys = doc.get("keys")
            if not isinstance(raw_keys, list):
                raise IdPMisconfigured("the IdP's JWK Set has no 'keys' list")
            keys: dict[str | None, _SigningKey] = {}
            for raw in raw_keys:
                if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                    continue
                try:
                    # PyJWK does not know RFC 9864's "Ed25519"; the key itself is an ordinary OKP key.
                    key = jwt.PyJWK(raw, algorithm="EdDSA" if raw.get("alg") == "Ed25519" else None)
                except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                    continue  # a key type we cannot use (RFC 7517 §5: ignore it)
                kid, declared = raw.get("kid"), raw.get("alg")
                keys[kid if isinstance(kid, str) else None] = _SigningKey(
                    key, declared if isinstance(declared, str) else None
                )
            if not keys:
                raise IdPMisconfigured("the IdP's JWK Set holds no usable signing key")
            self._keys = keys
            self._keys_at = self._monotonic()

    # --- ID tokens (OIDC Core §3.1.3.7) ---

    async def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict[str, Any]:
        """Verify an ID token and return its claims; raises :class:`IdTokenInvalid`.

        May raise :class:`IdPUnavailable` when the key set cannot be fetched.
        """
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise IdTokenInvalid("the ID token is not a well-formed JWT") from exc
        alg = header.get("alg")
        # OIDC Core §3.1.3.7 (6): "the Client MUST validate the signature of all other ID Tokens according
        # to JWS using the algorithm specified in the JWT alg Header Parameter"; RFC 8725 §3.1 restricts
        # that algorithm to our allow-list.
        if not isinstance(alg, str) or alg not in ID_TOKEN_ALGORITHMS:
            raise IdTokenInvalid("the ID token's signing algorithm is not accepted")
        kid = header.get("kid")
        key = await self._signing_key(kid if isinstance(kid, str) else None)
        # RFC 7517 §4.4: a key that declares its algorithm is used with that algorithm only.
        if key.alg is not None and key.alg != alg:
            raise IdTokenInvalid("the ID token's algorithm does not match its key")
        if alg == "Ed25519" and not isinstance(key.jwk.key, Ed25519PublicKey):
            raise IdTokenInvalid("the ID token's algorithm does not match its key")
        try:
            claims: dict[str, Any] = _DECODER.decode(
                id_token,
                key=key.jwk.key,
                algorithms=[alg],
                # OIDC Core §3.1.3.7 (3): "The Client MUST validate that the aud (audience) Claim contains
                # its client_id value registered at the Issuer identified by the iss (issuer) Claim as an
                # audience."
                audience=self._client_id,
                # (2): "The Issuer Identifier for the OpenID Provider ... MUST exactly match the value of the
                # iss (issuer) Claim." pyjwt compares the strings exactly.
                issuer=self._issuer,
                # (9): "The current time MUST be before the time represented by the exp Claim (possibly
                # allowing for some small leeway to account for clock skew)."
                leeway=self._leeway,
                options={"require": _REQUIRED_ID_TOKEN_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise IdTokenInvalid("the ID token has expired", kind="expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise IdTokenInvalid("the ID token is not issued to this client (aud)") from exc
        except jwt.InvalidIssuerError as exc:
            raise IdTokenInvalid("the ID token comes from another issuer (iss)") from exc
        except jwt.InvalidSignatureError as exc:
            raise IdTokenInvalid("the ID token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise IdTokenInvalid(f"the ID token lacks the {exc.claim!r} claim") from exc
        except jwt.ImmatureSignatureError as exc:
            raise IdTokenInvalid("the ID token is not valid yet (iat/nbf in the future)") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise IdTokenInvalid("the ID token does not verify") from exc
        aud = claims.get("aud")
        azp = claims.get("azp")
        # (4)/(5): with several audiences an azp should be present; when present it must be our client_id.
        if azp is not None and azp != self._client_id:
            raise IdTokenInvalid("the ID token's authorized party (azp) is another client")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise IdTokenInvalid("the ID token has several audiences and no azp")
        if nonce is not None:
            # (11): "If a nonce value was sent in the Authentication Request, a nonce Claim MUST be present
            # and its value checked to verify that it is the same value as the one that was sent."
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise IdTokenInvalid("the ID token's nonce does not match the authorization request")
        return claims

    # --- UserInfo (OIDC Core §5.3) ---

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The UserInfo endpoint's claims (a JSON answer; OIDC Core §5.3.2). The caller checks ``sub``.

        Raises :class:`IdPUnavailable` (or :class:`IdPMisconfigured` when the IdP names no endpoint).
        """
        metadata = await self.discover()
        if metadata.userinfo_endpoint is None:
            raise IdPMisconfigured("the IdP's discovery document names no userinfo_endpoint")
        # The bearer token is never carried along a redirect.
        answer = await self._send(
            "GET", metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"},
            follow_redirects=False,
        )
        if answer.status != 200:
            raise IdPUnavailable("the IdP's userinfo endpoint failed", status=answer.status)
        return self._json_object(answer, "userinfo")

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
        answer = await self._send("POST", metadata.revocation_endpoint, data=body, headers=headers)
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
        answer = await self._send("POST", metadata.token_endpoint, data=body, headers=headers)
        if 200 <= answer.status < 300:
            doc = self._json_object(answer, "token")
            if "error" in doc and "access_token" not in doc and "accessToken" not in doc:
                # Some IdPs (GitHub among them) answer errors with 200; RFC 6749 §5.2 says 400.
                raise self._token_error(answer, grant_type, doc)
            return self._parse_token_response(doc, grant_type)
        raise self._token_error(answer, grant_type)

    def _token_error(self, answer: _HttpAnswer, grant_type: str, doc: object = None) -> IdPError:
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

    # --- HTTP: the one place aiohttp is called and its exceptions translated ---

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        answer = await self._send("GET", url)
        if answer.status != 200:
            raise IdPUnavailable(
                f"the IdP's {what} endpoint failed", status=answer.status, retry_after=answer.retry_after
            )
        return self._json_object(answer, what)

    @staticmethod
    def _json_object(answer: _HttpAnswer, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise IdPUnavailable(f"the IdP's {what} answer is not JSON", status=answer.status) from exc
        if not isinstance(doc, dict):
            raise IdPUnavailable(f"the IdP's {what} answer is not a JSON object", status=answer.status)
        return doc

    async def _send(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool | None = None,
    ) -> _HttpAnswer:
        all_headers = {
            "Accept": "application/json",
            # The caller's session may be the proxy's (auto_decompress=False): ask for an unencoded body.
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
            **(headers or {}),
        }
        try:
            async with self._session.request(
                method,
                url,
                data=dict(data) if data is not None else None,
                headers=all_headers,
                timeout=self._timeout,
                # A token POST carrying client credentials is never replayed to another location.
                allow_redirects=method == "GET" if follow_redirects is None else follow_redirects,
            ) as response:
                try:
                    # One deadline for the whole exchange: the body read gets what the request left of it.
                    body = await read_bounded(
                        response.content,
                        limit=MAX_RESPONSE_BYTES,
                        timeout=self._timeout_seconds,
                        declared=response.content_length,
                    )
                except BodyTooLarge:
                    raise IdPUnavailable("the IdP's answer is too large", status=response.status) from None
                return _HttpAnswer(
                    status=response.status,
                    body=body,
                    retry_after=_parse_retry_after(response.headers.get("Retry-After")),
                )
        except TimeoutError as exc:
            log.warning("idp request timed out: %s %s", method, url)
            raise IdPUnavailable("the IdP did not answer in time") from exc
        except aiohttp.ClientError as exc:
            log.warning("idp request failed: %s %s: %s", method, url, type(exc).__name__)
            raise IdPUnavailable(f"the IdP could not be reached ({type(exc).__name__})") from exc
