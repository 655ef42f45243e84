"""JWT signature verification against an issuer's JWKS (gate mode with ``jwks_url``).

* RFC 7517 §5: the JWK Set document; keys are chosen by ``kid`` (RFC 7515 §4.1.4).
* RFC 8725 §3.1: "Libraries MUST enable the caller to specify a supported set of algorithms and MUST NOT use
  any other algorithms": only asymmetric algorithms are accepted (never ``none``, never HMAC, which would
  let a public key be used as a shared secret).
* RFC 7519 §7.2: ``iss`` and ``aud`` are checked when configured.

The keys are held by ``sidecar.keyset.KeySet``, the one key cache the broker's IdP client uses too: fetched
once, refetched when older than ``KEYS_CACHE_SECONDS``, and on an unknown ``kid`` at most once per
``KEYS_REFETCH_MIN_INTERVAL_SECONDS`` (a flood of tokens with random ``kid``s must not become a flood of
requests to the issuer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import jwt

from sidecar.challenge import InvalidToken, ServiceUnavailable
from sidecar.keyset import KEYS_FETCH_TIMEOUT_SECONDS, KeySet, KeySetUnavailable
from sidecar.problems import KEYS_RETRY_AFTER_SECONDS

log = logging.getLogger("sidecar.jwks")

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class JwksVerifier:
    """Verifies signatures, ``iss`` and ``aud``; time claims are the caller's (pure) business."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        jwks_url: str,
        *,
        issuer: str | None,
        audience: list[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = jwks_url
        self._issuer = issuer
        self._audience = audience or None
        # A JWKS endpoint slower than the timeout is treated as down: 503 + Retry-After when no keys are cached.
        self._keys = KeySet(session, jwks_url, timeout=KEYS_FETCH_TIMEOUT_SECONDS, monotonic=clock)

    @property
    def ready(self) -> bool:
        return self._keys.ready

    async def _fetch(self) -> None:
        """Fetch the key set now; a failure is logged and the cached keys (if any) stay."""
        try:
            await self._keys.refresh()
        except KeySetUnavailable as exc:
            log.warning("cannot fetch JWKS", extra={"jwks_url": self._url, "error": exc.reason})

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        try:
            key = await self._keys.key(kid)
        except KeySetUnavailable as exc:
            log.warning("cannot fetch JWKS", extra={"jwks_url": self._url, "error": exc.reason})
            if not self._keys.ready:
                raise ServiceUnavailable(
                    "the token issuer's signing keys cannot be fetched right now",
                    retry_after=KEYS_RETRY_AFTER_SECONDS,
                ) from None
            key = None  # the refetch for an unknown kid failed: the kid stays unknown
        if key is None:
            raise InvalidToken("the token is signed with an unknown key", reason="bad_signature")
        return key.jwk

    async def verify(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        """Return the verified claims or raise :class:`InvalidToken`. ``exp``/``nbf`` are not checked here."""
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken(f"tokens signed with {alg!r} are not accepted", reason="bad_signature")
        kid = header.get("kid")
        key = await self._key_for(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "verify_exp": False,  # time claims are checked by sidecar.tokens with the configured leeway
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": bool(self._audience),
                },
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not meant for this resource (aud)", reason="bad_audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token comes from another issuer (iss)", reason="bad_issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the token lacks the {exc.claim} claim", reason="bad_claims") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature is invalid", reason="bad_signature") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            # TypeError/ValueError: the header's alg does not fit the key (an EC alg on an RSA key, say).
            raise InvalidToken("the token cannot be verified", reason="bad_signature") from None
        return claims
