"""OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; MCP 2025-11-25 and
2026-07-28: the preferred way for a client to identify itself).

The client id is an ``https`` URL; the authorization server fetches the JSON document at that URL and uses
it in place of a registration.

* Client identifier URL (draft §3): "MUST have an https scheme", "MUST contain a path component", "MUST NOT
  contain single-dot or double-dot path segments", "MUST NOT contain a fragment component", "MUST NOT
  contain a username or password".
* The document (draft §4): "MUST contain a client_id property whose value MUST match the URL of the
  document using simple string comparison"; shared-secret authentication is impossible: the document
  MUST NOT carry ``client_secret``/``client_secret_expires_at`` and its ``token_endpoint_auth_method`` must
  not be a ``client_secret_*`` method. We accept ``none`` (public clients, PKCE).
* Fetching (draft §5): only a ``200`` answer counts; redirects are not followed (a redirect could move the
  fetch to an address the checks below never saw).
* Caching (draft §5.2): successes for the document's ``max-age`` bounded to ``CIMD_MAX_CACHE_SECONDS``
  (``CIMD_DEFAULT_CACHE_SECONDS`` without one); failures for ``CIMD_FAILURE_CACHE_SECONDS``, so made-up
  client ids cannot turn the sidecar into a reflector. At most ``CIMD_MAX_FETCHES_PER_HOST`` fetches run
  against one host at once.
* SSRF (draft §8.6): the host must not resolve to a private, loopback, link-local, multicast or otherwise
  non-global address unless ``cimd_allow_private_addresses`` is set; IPv6 addresses that carry an IPv4
  address (IPv4-mapped, NAT64, 6to4, Teredo) are judged by that address too. The check runs inside the connector's
  resolver, on the very addresses the connection then uses, so DNS rebinding between check and connect is
  impossible.
* Size (draft §8.7): at most ``CIMD_MAX_BYTES`` (5 KB) are read; a larger document is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from sidecar.bounded import BodyTooLarge, read_bounded
from sidecar.oauth.clients import Client, clean_name, is_private_use, parse_plain_uri, redirect_uri_problem

log = logging.getLogger("sidecar.oauth.cimd")

# draft §8.7 suggests 5 kilobytes; real documents are a few hundred bytes.
CIMD_MAX_BYTES: Final = 5 * 1024
# The fetch runs while a user waits on /authorize (or a client on /token): a few seconds, not the IdP's ten.
CIMD_FETCH_TIMEOUT_SECONDS: Final = 5.0
# Without caching headers a document is reused for five minutes: a changed document shows up quickly.
CIMD_DEFAULT_CACHE_SECONDS: Final = 300.0
# However long the document asks to be cached, it is refetched after a day (its owner may have changed it).
CIMD_MAX_CACHE_SECONDS: Final = 86_400.0
CIMD_CACHE_ENTRIES: Final = 1_000
# A failed fetch is remembered this long: a client id that does not resolve (or a flood of made-up ones on
# /revoke or /token) costs one outbound request per half minute, and a fixed document still shows up soon.
CIMD_FAILURE_CACHE_SECONDS: Final = 30.0
# At most this many fetches run at once against one host; more wait (within the fetch timeout) for a slot,
# so the sidecar cannot be used to hammer one site with parallel requests.
CIMD_MAX_FETCHES_PER_HOST: Final = 2
# NAT64 prefixes (RFC 6052 well-known prefix; RFC 8215 local-use) whose last 32 bits are an IPv4 address.
_NAT64_PREFIXES: Final = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# IPv4-compatible IPv6 (RFC 4291 §2.5.5.1, deprecated): ::a.b.c.d.
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
MAX_CLIENT_ID_LENGTH: Final = 2_000
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


class CimdError(Exception):
    """The client id URL or its document is unusable. ``reason`` is safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CimdBusy(CimdError):
    """Too many fetches to the document's host at once: transient, so not remembered as a failure."""


def looks_like_metadata_url(client_id: str) -> bool:
    """Client ids that name a metadata document (everything else is a registration id)."""
    return client_id.startswith("https://")


def client_id_url_problem(client_id: str) -> str | None:
    """Why ``client_id`` is not a valid client identifier URL (draft §3), or ``None``."""
    if len(client_id) > MAX_CLIENT_ID_LENGTH:
        return "the client id URL is too long"
    # Read the way browsers and the fetcher read it: no backslash, whitespace, userinfo, non-ASCII (hosts in
    # punycode) or percent-encoded authority (the same plain form as redirect URIs).
    plain = parse_plain_uri(client_id)
    if isinstance(plain, str):
        return "the client id URL is not a plain https URL: " + plain.replace("redirect URIs", "URLs").replace(
            "redirect URI", "URL"
        )
    try:
        parts = urlsplit(client_id)
        _ = parts.port
    except ValueError:
        return "the client id is not a valid URL"
    if parts.scheme != "https":
        return "a client id URL must use https"
    if not parts.hostname:
        return "a client id URL needs a host"
    if "#" in client_id:
        return "a client id URL must not contain a fragment"
    if parts.username is not None or parts.password is not None:
        return "a client id URL must not contain a username or password"
    if parts.path in ("", "/"):
        return "a client id URL must contain a path"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return "a client id URL must not contain . or .. path segments"
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries to a v4 host: IPv4-mapped, IPv4-compatible, NAT64
    (RFC 6052), 6to4 (RFC 3056) and Teredo (RFC 4380: server and client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if any(ip in net for net in _NAT64_PREFIXES) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def address_allowed(address: str, allow_private: bool) -> bool:
    """Only globally routable unicast addresses, unless private ones are allowed (tests, development).
    IPv6 addresses that embed an IPv4 address are judged by that address too."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += embedded_ipv4(ip)
    for candidate in candidates:
        if candidate.is_multicast or candidate.is_unspecified:
            return False
        if not allow_private and not (
            candidate.is_global and not (candidate.is_private or candidate.is_loopback or candidate.is_link_local)
        ):
            return False
    return True


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses the host if any address is not allowed."""

    def __init__(self, allow_private: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_private = allow_private
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not address_allowed(result["host"], self._allow_private):
                raise OSError(f"{host} resolves to an address that is not allowed for client metadata")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _document_ttl(cache_control: str | None) -> float:
    if cache_control is None:
        return CIMD_DEFAULT_CACHE_SECONDS
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    match = _MAX_AGE.search(cache_control)
    if match is None:
        return CIMD_DEFAULT_CACHE_SECONDS
    return min(float(match.group(1)), CIMD_MAX_CACHE_SECONDS)


def client_from_document(client_id: str, doc: Any) -> Client:
    """Validate a fetched document (draft §4) and turn it into a :class:`Client`. Raises :class:`CimdError`."""
    if not isinstance(doc, dict):
        raise CimdError("the client metadata document is not a JSON object")
    # draft §4: "the client_id property ... MUST match the URL of the document using simple string comparison"
    if doc.get("client_id") != client_id:
        raise CimdError("the client metadata document names another client_id")
    # draft §4: shared secrets cannot exist for a document anyone can read.
    if "client_secret" in doc or "client_secret_expires_at" in doc:
        raise CimdError("a client metadata document must not contain a client secret")
    method = doc.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise CimdError("client metadata documents must use token_endpoint_auth_method 'none' here")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise CimdError("the client metadata document has no redirect_uris")
    # As at registration: without application_type, a private-use redirect scheme makes the client native.
    application_type = doc.get("application_type", "native" if any(is_private_use(u) for u in uris) else "web")
    if application_type not in ("web", "native"):
        raise CimdError("application_type must be 'web' or 'native'")
    for uri in uris:
        problem = redirect_uri_problem(uri, application_type)
        if problem is not None:
            raise CimdError(f"the client metadata document has an invalid redirect URI: {problem}")
    grant_types = doc.get("grant_types", ["authorization_code", "refresh_token"])
    if not isinstance(grant_types, list) or "authorization_code" not in grant_types:
        raise CimdError("the client metadata document must allow the authorization_code grant")
    response_types = doc.get("response_types", ["code"])
    if not isinstance(response_types, list) or "code" not in response_types:
        raise CimdError("the client metadata document must allow response_type 'code'")
    name = doc.get("client_name")
    client_uri = doc.get("client_uri")
    return Client(
        client_id=client_id,
        kind="metadata_document",
        redirect_uris=tuple(uris),
        token_endpoint_auth_method="none",
        grant_types=tuple(g for g in grant_types if g in ("authorization_code", "refresh_token")),
        application_type=application_type,
        client_name=clean_name(name, 200),
        client_uri=client_uri if isinstance(client_uri, str) else None,
    )


class CimdFetcher:
    """Fetches, validates and caches client metadata documents. One per app; :meth:`close` on shutdown."""

    def __init__(
        self,
        *,
        allow_private: bool,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = CIMD_FETCH_TIMEOUT_SECONDS,
        resolver: AbstractResolver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allow_private = allow_private
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._resolver = resolver
        self._monotonic = monotonic
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[str, tuple[Client, float]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Client]] = {}
        self._per_host: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._allow_private, self._resolver),
                use_dns_cache=False,  # every fetch resolves (and checks) again
                ssl=self._ssl,
                limit=20,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxy from the environment: the address checks must see the real target
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def forget(self, client_id: str) -> None:
        self._cache.pop(client_id, None)
        self._failures.pop(client_id, None)

    async def get(self, client_id: str) -> Client:
        """The client described by the document at ``client_id``. Raises :class:`CimdError`."""
        problem = client_id_url_problem(client_id)
        if problem is not None:
            raise CimdError(problem)
        cached = self._cache.get(client_id)
        if cached is not None:
            if self._monotonic() < cached[1]:
                return cached[0]
            self._cache.pop(client_id, None)
        failed = self._failures.get(client_id)
        if failed is not None:
            if self._monotonic() < failed[1]:
                raise CimdError(failed[0])
            self._failures.pop(client_id, None)
        flight = self._inflight.get(client_id)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch_remembering_failure(client_id))
            self._inflight[client_id] = flight
            flight.add_done_callback(lambda _f: self._inflight.pop(client_id, None))
        return await asyncio.shield(flight)

    async def _fetch_remembering_failure(self, client_id: str) -> Client:
        try:
            return await self._fetch_one_per_host(client_id)
        except CimdBusy:
            raise
        except CimdError as exc:
            self._failures[client_id] = (exc.reason, self._monotonic() + CIMD_FAILURE_CACHE_SECONDS)
            while len(self._failures) > CIMD_CACHE_ENTRIES:
                self._failures.popitem(last=False)
            raise

    async def _fetch_one_per_host(self, client_id: str) -> Client:
        host = (urlsplit(client_id).hostname or "").lower()
        semaphore, users = self._per_host.get(host) or (asyncio.Semaphore(CIMD_MAX_FETCHES_PER_HOST), 0)
        self._per_host[host] = (semaphore, users + 1)
        try:
            try:
                async with asyncio.timeout(CIMD_FETCH_TIMEOUT_SECONDS):
                    await semaphore.acquire()
            except TimeoutError:
                raise CimdBusy("too many client metadata fetches to this host at once; try again") from None
            try:
                return await self._fetch(client_id)
            finally:
                semaphore.release()
        finally:
            semaphore, users = self._per_host[host]
            if users <= 1:
                del self._per_host[host]
            else:
                self._per_host[host] = (semaphore, users - 1)

    async def _fetch(self, client_id: str) -> Client:
        host = urlsplit(client_id).hostname or ""
        literal = _ip_literal(host)
        # IP literals never reach the resolver: check them here.
        if literal is not None and not address_allowed(literal, self._allow_private):
            raise CimdError("the client id URL points at an address that is not allowed")
        try:
            async with self._http().get(
                client_id,
                allow_redirects=False,  # draft §5: redirects are not followed
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise CimdError(f"fetching the client metadata document answered HTTP {response.status}")
                try:
                    body = await read_bounded(
                        response.content,
                        limit=CIMD_MAX_BYTES,
                        timeout=CIMD_FETCH_TIMEOUT_SECONDS,
                        declared=response.content_length,
                    )
                except BodyTooLarge:
                    raise CimdError(f"the client metadata document is larger than {CIMD_MAX_BYTES} bytes") from None
                ttl = _document_ttl(response.headers.get("Cache-Control"))
        except CimdError:
            raise
        except TimeoutError as exc:
            raise CimdError("fetching the client metadata document timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            log.info("client metadata fetch failed: %s", type(exc).__name__)
            raise CimdError("the client metadata document could not be fetched") from exc
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise CimdError("the client metadata document is not JSON") from exc
        client = client_from_document(client_id, doc)
        if ttl > 0:
            self._cache[client_id] = (client, self._monotonic() + ttl)
            while len(self._cache) > CIMD_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return client


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
