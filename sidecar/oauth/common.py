"""Shared pieces of the authorization server: endpoint URLs, scopes, RFC 8707 resources, PKCE, redirects.

* RFC 8414 §2: the ``issuer`` is ``public_url`` exactly as :attr:`Settings.public` renders it; the same
  string is the protected-resource metadata's ``authorization_servers[0]`` (RFC 9728 §2) and the ``iss`` of
  every authorization response (RFC 9207 §2), because clients compare them as plain strings.
* RFC 8707 §2: a ``resource`` is accepted when it equals ``public_url`` or names a path under it
  (DESIGN §13); anything else is ``invalid_target``. "The resource URI MUST NOT include a fragment".
* RFC 7636 §4.1/§4.6: ``code_verifier`` is 43-128 unreserved characters and
  ``BASE64URL(SHA256(code_verifier)) == code_challenge``, compared in constant time.
* RFC 6749 §3.1.2: "The endpoint URI MAY include an application/x-www-form-urlencoded formatted query
  component, which MUST be retained when adding additional query parameters"; parameters are appended.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from sidecar.bounded import BodyTooLarge, read_bounded
from sidecar.config import Settings
from sidecar.keys import SETTINGS
from sidecar.oauth.errors import RateLimited, RequestTimeout
from sidecar.oauth.ratelimit import RateLimiter
from sidecar.policy import policy_scopes
from sidecar.providers import OFFLINE_ACCESS_SCOPE

# Paths of our endpoints, under public_url (DESIGN §3: own endpoints live under /oauth/ and /.well-known/).
AUTHORIZE_PATH: Final = "/oauth/authorize"
CONSENT_PATH: Final = "/oauth/consent"
CALLBACK_PATH: Final = "/oauth/callback"  # the redirect_uri registered at the upstream IdP
TOKEN_PATH: Final = "/oauth/token"
REGISTER_PATH: Final = "/oauth/register"
REVOKE_PATH: Final = "/oauth/revoke"
AS_METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
OIDC_DISCOVERY_PATH: Final = "/.well-known/openid-configuration"

# RFC 7636 §4.1: code_verifier = 43*128unreserved; the challenge (S256) is 43 base64url characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")
# Our own state/nonce/code values: 256 bits each (RFC 6749 §10.10: "The probability of an attacker guessing
# generated tokens ... MUST be less than or equal to 2^(-128)").
SECRET_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str
    authorize: str
    consent: str
    callback: str
    token: str
    register: str
    revoke: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        issuer = issuer_of(settings)
        return cls(
            issuer=issuer,
            authorize=issuer + AUTHORIZE_PATH,
            consent=issuer + CONSENT_PATH,
            callback=issuer + CALLBACK_PATH,
            token=issuer + TOKEN_PATH,
            register=issuer + REGISTER_PATH,
            revoke=issuer + REVOKE_PATH,
        )


def issuer_of(settings: Settings) -> str:
    """The issuer identifier: ``public_url`` without a trailing slash, byte for byte as used everywhere."""
    return str(settings.public).rstrip("/")


def supported_scopes(settings: Settings) -> list[str]:
    """What clients may ask for: the upstream scopes, the required scopes, ``offline_access`` and the scopes that
    tool_policy rules require (so a client can step up to them after a 403 ``insufficient_scope``)."""
    return dedupe([*settings.idp_scopes, *settings.required_scopes, OFFLINE_ACCESS_SCOPE, *policy_scopes(settings)])


def default_scopes(settings: Settings) -> list[str]:
    """RFC 6749 §3.3: a request without ``scope`` gets these (the required scopes, else the upstream ones)."""
    return dedupe([*settings.idp_scopes, *settings.required_scopes])


def dedupe(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def parse_scope(text: str | None) -> list[str] | None:
    """RFC 6749 §3.3: space-delimited, case-sensitive; ``None`` when the parameter is absent or empty."""
    if text is None:
        return None
    scopes = dedupe(text.split(" "))
    return scopes or None


def resource_allowed(resource: str, settings: Settings) -> bool:
    """RFC 8707 §2 / DESIGN §13: ``public_url`` itself or a path below it; no fragment."""
    try:
        parts = urlsplit(resource)
        base = urlsplit(issuer_of(settings))
        port, base_port = parts.port, base.port
    except ValueError:
        return False
    if parts.fragment or "#" in resource or not parts.scheme or not parts.netloc:
        return False
    if parts.scheme.lower() != base.scheme.lower() or (parts.hostname or "") != (base.hostname or ""):
        return False
    if (port or _default_port(parts.scheme)) != (base_port or _default_port(base.scheme)):
        return False
    if parts.username or parts.password:
        return False
    base_path = base.path.rstrip("/")
    path = parts.path
    return path in (base_path, base_path + "/") or path.startswith(base_path + "/")


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def valid_code_challenge(challenge: str) -> bool:
    return bool(_CHALLENGE.fullmatch(challenge))


def pkce_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6, S256 only; the comparison runs in constant time."""
    if not _VERIFIER.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256(verifier).encode(), challenge.encode())


def with_params(uri: str, params: Mapping[str, str | None]) -> str:
    """``uri`` with ``params`` appended to its query (RFC 6749 §3.1.2: the existing query is retained)."""
    kept = {k: v for k, v in params.items() if v is not None}
    if not kept:
        return uri
    sep = "&" if "?" in uri else "?"
    return uri + sep + urlencode(kept)


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes (chunked bodies included: the
    app itself sets no body limit, because the proxied path streams bodies of any size). A body that takes
    longer than ``request_body_timeout_seconds`` to arrive is :class:`RequestTimeout` (408)."""
    seconds = request.app[SETTINGS].request_body_timeout_seconds
    try:
        return await read_bounded(request.content, limit=limit, timeout=seconds, declared=request.content_length)
    except BodyTooLarge:
        return None
    except TimeoutError:
        raise RequestTimeout(seconds) from None


def parse_form(body: bytes) -> dict[str, list[str]]:
    """``application/x-www-form-urlencoded`` (RFC 6749 Appendix B), every value of every name kept."""
    out: dict[str, list[str]] = {}
    for key, value in parse_qsl(body.decode("utf-8", "strict"), keep_blank_values=True):
        out.setdefault(key, []).append(value)
    return out


def rate_key(address: str) -> str:
    """What a rate limit counts: an IPv4 address (IPv4-mapped IPv6 unwrapped), or the /64 of an IPv6 one
    (RFC 6177 / RFC 7421: a /64 is what one subscriber, hence one attacker, gets at the least)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def check_rate(request: web.Request, limiter: RateLimiter) -> None:
    """Raise :class:`RateLimited` (429) when this client address is over ``limiter``'s budget."""
    wait = limiter.check(rate_key(client_address(request)))
    if wait:
        raise RateLimited(wait)


def client_address(request: web.Request) -> str:
    """The address rate limits key on: the peer, or, when the peer is a trusted proxy (``trusted_proxies``),
    the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy. Entries further left were
    written by the client and are never believed."""
    peer = request.remote or "unknown"
    trusted = _networks(tuple(request.app[SETTINGS].trusted_proxies))
    if not trusted or not _in(peer, trusted):
        return peer
    chain = [a.strip() for v in request.headers.getall("X-Forwarded-For", ()) for a in v.split(",") if a.strip()]
    for address in reversed(chain):
        if not _in(address, trusted):
            return address
    return peer


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _in(address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def secure_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def scopes_text(scopes: Sequence[str]) -> str:
    return " ".join(scopes)
