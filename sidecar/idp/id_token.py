"""ID token verification (OIDC Core §3.1.3.7) against the provider's signing keys (RFC 7517 §5).

The JWK Set is fetched from the discovery document's ``jwks_uri``, cached for ``JWKS_CACHE_SECONDS``, and
refetched when a token names an unknown ``kid``, at most once per ``JWKS_REFETCH_MIN_INTERVAL_SECONDS``.
The signature, ``iss``, ``aud``/``azp``, ``exp`` with leeway and ``nonce`` (when one was sent) are checked;
PyJWT's exceptions become :class:`IdTokenInvalid` here and go no further.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from sidecar.idp.discovery import Discovery
from sidecar.idp.errors import IdPMisconfigured, IdPUnavailable, IdTokenInvalid
from sidecar.idp.transport import IdPTransport

log = logging.getLogger("sidecar.idp")

# Providers publish a new signing key well before using it; an hour-old key set is fresh enough, and an
# unknown ``kid`` triggers an early refetch anyway.
JWKS_CACHE_SECONDS = 3600.0
# An unknown ``kid`` refetches the key set at most this often, so tokens with made-up ``kid``s cannot turn
# into a flood of requests to the IdP.
JWKS_REFETCH_MIN_INTERVAL_SECONDS = 60.0
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


@dataclass(frozen=True, slots=True)
class SigningKey:
    jwk: jwt.PyJWK
    alg: str | None  # the JWK's own "alg", when it declares one


class IdTokenVerifier:
    """Verifies one issuer's ID tokens for one client; ``monotonic`` measures the key set's age."""

    def __init__(
        self,
        transport: IdPTransport,
        discovery: Discovery,
        *,
        issuer: str,
        client_id: str,
        leeway: float = DEFAULT_ID_TOKEN_LEEWAY_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._discovery = discovery
        self._issuer = issuer
        self._client_id = client_id
        self._leeway = leeway
        self._monotonic = monotonic
        self._keys: dict[str | None, SigningKey] = {}
        self._keys_at: float | None = None
        self._keys_lock = asyncio.Lock()

    async def _signing_key(self, kid: str | None) -> SigningKey:
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

    def _pick_key(self, kid: str | None) -> SigningKey | None:
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
            metadata = await self._discovery.get()
            doc = await self._transport.get_json(metadata.jwks_uri, "jwks")
            raw_keys = doc.get("keys")
            if not isinstance(raw_keys, list):
                raise IdPMisconfigured("the IdP's JWK Set has no 'keys' list")
            keys: dict[str | None, SigningKey] = {}
            for raw in raw_keys:
                if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                    continue
                try:
                    # PyJWK does not know RFC 9864's "Ed25519"; the key itself is an ordinary OKP key.
                    key = jwt.PyJWK(raw, algorithm="EdDSA" if raw.get("alg") == "Ed25519" else None)
                except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                    continue  # a key type we cannot use (RFC 7517 §5: ignore it)
                kid, declared = raw.get("kid"), raw.get("alg")
                keys[kid if isinstance(kid, str) else None] = SigningKey(
                    key, declared if isinstance(declared, str) else None
                )
            if not keys:
                raise IdPMisconfigured("the IdP's JWK Set holds no usable signing key")
            self._keys = keys
            self._keys_at = self._monotonic()

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
