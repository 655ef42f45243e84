"""JWT signature verification against an issuer's JWKS (gate mode with ``jwks_url``).

* RFC 7517 §5: the JWK Set document; keys are chosen by ``kid`` (RFC 7515 §4.1.4).
* RFC 8725 §3.1: "Libraries MUST enable the caller to specify a supported set of algorithms and MUST NOT use
  any other algorithms": only asymmetric algorithms are accepted (never ``none``, never HMAC, which would
  let a public key be used as a shared secret).
* RFC 7519 §7.2: ``iss`` and ``aud`` are checked when configured.

Keys are fetched once, refreshed in the background of requests when older than ``JWKS_MAX_AGE_SECONDS``, and
refetched on an unknown ``kid`` at most once per ``JWKS_MIN_REFETCH_SECONDS`` (a flood of tokens with random
``kid``s must not become a flood of requests to the issuer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import jwt

from sidecar.bounded import BodyTooLarge, read_bounded
from sidecar.challenge import InvalidToken, ServiceUnavailable
from sidecar.problems import KEYS_RETRY_AFTER_SECONDS

log = logging.getLogger("sidecar.jwks")

ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# Issuers rotate keys with overlap measured in hours; ten minutes keeps a rotated key usable quickly.
JWKS_MAX_AGE_SECONDS = 600.0
# An unknown kid triggers a refetch, but no more often than this, so forged kids cannot hammer the issuer.
JWKS_MIN_REFETCH_SECONDS = 30.0
# A JWKS endpoint slower than this is treated as down; the request gets 503 + Retry-After when no keys are cached.
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
JWKS_MAX_BYTES = 256 * 1024


class JwksVerifier:
    """Verifies signatures, ``iss`` and ``aud``; time claims are the caller's (pure) business."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        jwks_url: str,
        *,
        issuer: str | None,
        audience: list[str],
        clock: Any = time.monotonic,
    ) -> None:
        self._session = session
        self._url = jwks_url
        self._issuer = issuer
        self._audience = audience or None
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -1e18
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    async def _fetch(self) -> None:
        async with self._lock:
            if self._clock() - self._fetched_at < JWKS_MIN_REFETCH_SECONDS and self._keys:
                return
            self._fetched_at = self._clock()
            try:
                timeout = aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS)
                async with self._session.get(self._url, timeout=timeout, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    body = await read_bounded(
                        resp.content,
                        limit=JWKS_MAX_BYTES,
                        timeout=JWKS_FETCH_TIMEOUT_SECONDS,
                        declared=resp.content_length,
                    )
                keyset = jwt.PyJWKSet.from_json(body.decode("utf-8"))
            except (
                aiohttp.ClientError, TimeoutError, BodyTooLarge, ValueError, UnicodeDecodeError, RecursionError,
                jwt.PyJWTError,
            ) as exc:
                log.warning("cannot fetch JWKS", extra={"jwks_url": self._url, "error": type(exc).__name__})
                return
            self._keys = {k.key_id or f"#{i}": k for i, k in enumerate(keyset.keys)}
            log.info("JWKS loaded", extra={"jwks_url": self._url, "keys": len(self._keys)})

    async def _key_for(self, kid: str | None) -> jwt.PyJWK:
        if not self._keys or self._clock() - self._fetched_at > JWKS_MAX_AGE_SECONDS:
            await self._fetch()
        if not self._keys:
            raise ServiceUnavailable(
                "the token issuer's signing keys cannot be fetched right now", retry_after=KEYS_RETRY_AFTER_SECONDS
            )
        key = self._keys.get(kid) if kid else None
        if key is None and kid is not None:
            await self._fetch()  # rotated keys: refetch (rate-limited)
            key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise InvalidToken("the token is signed with an unknown key", reason="bad_signature")
        return key

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
