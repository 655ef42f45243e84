"""ID token verification (OIDC Core §3.1.3.7) against the provider's signing keys (RFC 7517 §5).

The JWK Set is read from the discovery document's ``jwks_uri`` through the one key cache of the sidecar
(``sidecar.keyset.KeySet``, shared with gate mode): cached for ``KEYS_CACHE_SECONDS`` and refetched when a
token names an unknown ``kid``, at most once per ``KEYS_REFETCH_MIN_INTERVAL_SECONDS``.
The signature, ``iss``, ``aud``/``azp``, ``exp`` with leeway and ``nonce`` (when one was sent) are checked;
PyJWT's exceptions become :class:`IdTokenInvalid` here and go no further.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from sidecar.idp.discovery import Discovery
from sidecar.idp.errors import IdPMisconfigured, IdPUnavailable, IdTokenInvalid
from sidecar.idp.transport import DEFAULT_IDP_TIMEOUT_SECONDS
from sidecar.keyset import KeySet, KeySetInvalid, KeySetUnavailable, SigningKey

# Clock skew allowed between the IdP and us when checking ``exp``/``iat`` of an ID token.
DEFAULT_ID_TOKEN_LEEWAY_SECONDS = 60.0

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


class IdTokenVerifier:
    """Verifies one issuer's ID tokens for one client; ``monotonic`` measures the key set's age."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        discovery: Discovery,
        *,
        issuer: str,
        client_id: str,
        leeway: float = DEFAULT_ID_TOKEN_LEEWAY_SECONDS,
        timeout: float = DEFAULT_IDP_TIMEOUT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._issuer = issuer
        self._client_id = client_id
        self._leeway = leeway
        self._keys = KeySet(session, self._jwks_uri, timeout=timeout, follow_redirects=True, monotonic=monotonic)

    async def _jwks_uri(self) -> str:
        try:
            return (await self._discovery.get()).jwks_uri
        except IdPUnavailable as exc:
            raise KeySetUnavailable(str(exc)) from exc

    async def _signing_key(self, kid: str | None) -> SigningKey:
        try:
            key = await self._keys.key(kid)
        except KeySetUnavailable as exc:
            if isinstance(exc.__cause__, IdPUnavailable):
                raise exc.__cause__ from None  # discovery failed: its own error, as it was
            if isinstance(exc, KeySetInvalid):
                raise IdPMisconfigured(f"the IdP's signing keys are unusable: {exc.reason}") from exc
            raise IdPUnavailable(f"the IdP's signing keys cannot be fetched: {exc.reason}", status=exc.status) from exc
        if key is None:
            raise IdTokenInvalid("no key in the IdP's key set matches the token's kid")
        return key

    async def verify(self, id_token: str, nonce: str | None = None) -> dict[str, Any]:
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
