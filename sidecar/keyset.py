"""The one cache of an issuer's signing keys (a JWK Set, RFC 7517 §5), for the gate and the broker alike.

Gate mode's ``jwks_url`` (``sidecar.jwks``) and the upstream IdP's ``jwks_uri`` (``sidecar.idp.id_token``)
both read their keys through :class:`KeySet`:

* the document is fetched with one GET and read whole through ``sidecar.bounded.read_bounded`` (at most
  ``KEYS_MAX_BYTES``, within the caller's deadline, ``KEYS_FETCH_TIMEOUT_SECONDS`` by default);
* it is kept for ``KEYS_CACHE_SECONDS``; when a refetch fails the older keys stay in use, and the next
  attempt waits ``KEYS_REFETCH_MIN_INTERVAL_SECONDS``;
* a ``kid`` the cached set does not hold may be a freshly rotated key: the set is refetched, but at most once
  per ``KEYS_REFETCH_MIN_INTERVAL_SECONDS``, so tokens with made-up ``kid``s cannot become a flood of
  requests to the issuer;
* keys not meant for signatures (``use`` other than ``sig``) and keys of a type PyJWT cannot use are skipped
  (RFC 7517 §5: "implementations SHOULD ignore JWKs within a JWK Set that use 'kty' values that are not
  understood").

aiohttp's and PyJWT's exceptions end here: a fetch fails with :class:`KeySetUnavailable` (or
:class:`KeySetInvalid` when the issuer answered with a document that holds no usable key); each caller turns
those into its own problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import jwt

from sidecar.bounded import BodyTooLarge, read_bounded

log = logging.getLogger("sidecar.keyset")

# Issuers publish a new signing key well before using it and rotate with overlap measured in hours; ten
# minutes keeps a rotated key usable quickly (and an unknown ``kid`` triggers an early refetch anyway).
KEYS_CACHE_SECONDS: Final = 600.0
# An unknown ``kid`` (or a failed refetch of a stale set) refetches at most this often, so forged ``kid``s
# cannot hammer the issuer and an outage of the key endpoint costs one request per interval.
KEYS_REFETCH_MIN_INTERVAL_SECONDS: Final = 30.0
# A key endpoint slower than this is treated as down (the IdP's key set uses ``idp_timeout_seconds``).
KEYS_FETCH_TIMEOUT_SECONDS: Final = 5.0
# A JWK Set is a few kilobytes; refuse to buffer more than this.
KEYS_MAX_BYTES: Final = 256 * 1024
_USER_AGENT: Final = "mcp-auth-sidecar"


class KeySetUnavailable(Exception):
    """The key set could not be fetched now (timeout, connection error, non-200, too large, not JSON).

    ``reason`` is short and safe to log; ``status`` is the HTTP status when there was an answer.
    """

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason if status is None else f"{reason} (HTTP {status})")


class KeySetInvalid(KeySetUnavailable):
    """The issuer answered with a document that is no usable JWK Set: it will not heal by waiting."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    jwk: jwt.PyJWK
    alg: str | None  # the JWK's own "alg", when it declares one


def parse_key_set(body: bytes) -> dict[str | None, SigningKey]:
    """The usable signing keys of a JWK Set document, by ``kid`` (``None`` for a key without one)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise KeySetUnavailable("the key set is not JSON") from exc
    raw_keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw_keys, list):
        raise KeySetInvalid("the JWK Set has no 'keys' list")
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
        keys[kid if isinstance(kid, str) else None] = SigningKey(key, declared if isinstance(declared, str) else None)
    if not keys:
        raise KeySetInvalid("the JWK Set holds no usable signing key")
    return keys


class KeySet:
    """One issuer's signing keys, fetched from ``url`` on the caller's session (never closed here).

    ``url`` is the key set's address, or an async function giving it (the IdP's comes from its discovery
    document). ``monotonic`` measures the cache's age.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str | Callable[[], Awaitable[str]],
        *,
        timeout: float = KEYS_FETCH_TIMEOUT_SECONDS,
        follow_redirects: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._url = url
        self._timeout = timeout
        self._follow_redirects = follow_redirects
        self._monotonic = monotonic
        self._keys: dict[str | None, SigningKey] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._attempted_at: float | None = None  # the last fetch, successful or not
        self._generation = 0  # fetches completed, so callers that waited for the lock do not fetch again
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Whether any key is cached."""
        return bool(self._keys)

    async def key(self, kid: str | None) -> SigningKey | None:
        """The key named ``kid`` (or the only key, for a token without one), fetching as described above.

        ``None`` when the set holds no such key. Raises :class:`KeySetUnavailable` when no key is cached and
        the set cannot be fetched, or when the refetch for an unknown ``kid`` fails.
        """
        now = self._monotonic()
        if not self._keys:
            await self.refresh()
        elif self._stale(now) and not self._recently_attempted(now):
            try:
                await self.refresh()
            except KeySetUnavailable as exc:
                log.warning("key set refetch failed, using the cached keys: %s", exc)
        key = self._pick(kid)
        if key is None and kid is not None and not self._recently_attempted(self._monotonic()):
            await self.refresh()  # an unknown kid may be a freshly rotated key: refetch, rate-limited
            key = self._pick(kid)
        return key

    async def refresh(self) -> None:
        """Fetch the set now (one fetch for concurrent callers); the cached keys stay when it fails."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation and self._keys:
                return  # another task fetched while we waited for the lock
            self._attempted_at = self._monotonic()
            try:
                url = self._url if isinstance(self._url, str) else await self._url()
                keys = parse_key_set(await self._download(url))
            finally:
                self._generation += 1
            self._keys, self._fetched_at = keys, self._monotonic()
            log.info("key set loaded", extra={"url": url, "keys": len(keys)})

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= KEYS_CACHE_SECONDS

    def _recently_attempted(self, now: float) -> bool:
        return self._attempted_at is not None and now - self._attempted_at < KEYS_REFETCH_MIN_INTERVAL_SECONDS

    def _pick(self, kid: str | None) -> SigningKey | None:
        if kid is not None:
            return self._keys.get(kid)
        # OIDC Core §10.1: "If there are multiple keys in the referenced JWK Set document, a kid value MUST
        # be provided in the JOSE Header." Without one we only accept a set holding a single key.
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return None

    async def _download(self, url: str) -> bytes:
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        try:
            async with self._session.get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=self._follow_redirects,
            ) as response:
                if response.status != 200:
                    raise KeySetUnavailable("the key set endpoint failed", status=response.status)
                return await read_bounded(
                    response.content, limit=KEYS_MAX_BYTES, timeout=self._timeout, declared=response.content_length
                )
        except BodyTooLarge:
            raise KeySetUnavailable("the key set is too large") from None
        except TimeoutError as exc:
            log.warning("key set request timed out: %s", url)
            raise KeySetUnavailable("the key set endpoint did not answer in time") from exc
        except aiohttp.ClientError as exc:
            log.warning("key set request failed: %s: %s", url, type(exc).__name__)
            raise KeySetUnavailable(f"the key set endpoint could not be reached ({type(exc).__name__})") from exc
