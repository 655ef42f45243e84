"""Clients of the authorization server: the record, redirect URI rules, and client authentication.

* RFC 6749 §3.1.2: a redirect URI is absolute and "MUST NOT include a fragment component". §3.1.2.3 and
  RFC 9700 §4.1.1: redirect URIs are compared by exact string match.
* RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at the time of the request
  for loopback IP redirect URIs" (``http://127.0.0.1``, ``http://[::1]``): for those only the port may vary.
  §8.3: plain ``http`` is allowed for loopback only. §7.1: native apps may use a private-use scheme in
  reverse-domain form (it must contain a ``.``).
* OpenID Connect Registration 1.0 §2 ``application_type``: ``web`` (default) or ``native``; web clients get
  ``https`` and ``http`` on loopback (MCP clients run on the user's machine), native clients additionally
  private-use schemes.
* RFC 6749 §2.3.1: client secrets arrive by HTTP Basic (form-urlencoded id and secret) or in the body;
  §2.3: "The client MUST NOT use more than one authentication method in each request". Secrets are stored
  as SHA-256 hashes and compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote_plus, urlsplit

from aiohttp import web

from sidecar.oauth.errors import InvalidClient, InvalidRequest

ClientKind = Literal["registered", "metadata_document"]
AuthMethod = Literal["none", "client_secret_basic", "client_secret_post"]
AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("none", "client_secret_basic", "client_secret_post")
GRANT_TYPES: Final = ("authorization_code", "refresh_token")
# Loopback hosts that may use plain http (RFC 8252 §8.3); only the IP literals may vary their port (§7.3).
LOOPBACK_NAMES: Final = frozenset({"localhost"})
MAX_REDIRECT_URI_LENGTH: Final = 2000
CLIENT_FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Client:
    """A client as the endpoints need it, from a registration or a client ID metadata document."""

    client_id: str
    kind: ClientKind
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: AuthMethod
    grant_types: tuple[str, ...]
    application_type: str = "web"
    client_name: str | None = None
    client_uri: str | None = None
    secret_hash: str | None = None

    def __repr__(self) -> str:
        return (
            f"Client(client_id={self.client_id!r}, kind={self.kind!r}, redirect_uris={self.redirect_uris!r}, "
            f"token_endpoint_auth_method={self.token_endpoint_auth_method!r}, secret_hash='***')"
        )

    @property
    def confidential(self) -> bool:
        return self.token_endpoint_auth_method != "none"

    def display_name(self) -> str:
        """What the consent page calls the client: the document's host for CIMD (the only verified fact),
        else the self-asserted registered name."""
        if self.kind == "metadata_document":
            return urlsplit(self.client_id).hostname or self.client_id
        return self.client_name or "an unnamed client"

    def to_record(self) -> dict[str, Any]:
        return {
            "v": CLIENT_FORMAT_VERSION,
            "client_id": self.client_id,
            "redirect_uris": list(self.redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types),
            "application_type": self.application_type,
            "client_name": self.client_name,
            "client_uri": self.client_uri,
            "secret_hash": self.secret_hash,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Client | None:
        if record.get("v") != CLIENT_FORMAT_VERSION:
            return None
        method = record.get("token_endpoint_auth_method")
        if method not in AUTH_METHODS:
            return None
        return cls(
            client_id=str(record["client_id"]),
            kind="registered",
            redirect_uris=tuple(str(u) for u in record.get("redirect_uris", [])),
            token_endpoint_auth_method=method,
            grant_types=tuple(str(g) for g in record.get("grant_types", [])),
            application_type=str(record.get("application_type") or "web"),
            client_name=_opt_str(record.get("client_name")),
            client_uri=_opt_str(record.get("client_uri")),
            secret_hash=_opt_str(record.get("secret_hash")),
        )


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# --- redirect URIs ----------------------------------------------------------------------------------------


def _loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_problem(uri: object, application_type: str) -> str | None:
    """Why ``uri`` cannot be registered, or ``None`` when it can."""
    if not isinstance(uri, str) or not uri:
        return "each redirect URI must be a non-empty string"
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        return "redirect URI too long"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "redirect URIs must not contain spaces or control characters"
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError:
        return "redirect URI is not a valid URI"
    # RFC 6749 §3.1.2: "The endpoint URI MUST NOT include a fragment component."
    if "#" in uri:
        return "redirect URIs must not contain a fragment"
    scheme = parts.scheme.lower()
    if not scheme:
        return "redirect URIs must be absolute"
    if parts.username is not None or parts.password is not None:
        return "redirect URIs must not contain user information"
    if scheme == "https":
        return None if parts.hostname else "https redirect URIs need a host"
    if scheme == "http":
        host = (parts.hostname or "").lower()
        # RFC 8252 §8.3 / RFC 9700 §4.1.1: plain http only back to the user's own machine.
        if host in LOOPBACK_NAMES or _loopback_ip(host):
            return None
        return "http redirect URIs are allowed on loopback only (127.0.0.1, [::1], localhost); use https"
    if application_type != "native":
        return "web clients must use https (or http on loopback) redirect URIs"
    # RFC 8252 §7.1: "a URI scheme based on a domain name under their control, expressed in reverse order".
    if "." not in scheme or scheme in ("javascript", "data", "file", "vbscript", "blob"):
        return "private-use redirect URI schemes must be in reverse-domain form (com.example.app:/cb)"
    return None


def redirect_uri_matches(registered: Sequence[str], requested: str) -> bool:
    """Exact match, except that a loopback IP literal may change its port (RFC 8252 §7.3)."""
    for candidate in registered:
        if hmac.compare_digest(candidate.encode(), requested.encode()):
            return True
    try:
        req = urlsplit(requested)
        req_host = req.hostname or ""
        _ = req.port
    except ValueError:
        return False
    if req.scheme != "http" or not _loopback_ip(req_host) or "#" in requested:
        return False
    for candidate in registered:
        try:
            reg = urlsplit(candidate)
            _ = reg.port
        except ValueError:
            continue
        if (
            reg.scheme == "http"
            and (reg.hostname or "") == req_host
            and reg.path == req.path
            and reg.query == req.query
            and _loopback_ip(reg.hostname or "")
        ):
            return True
    return False


# --- client authentication at the token and revocation endpoints -------------------------------------------


@dataclass(frozen=True, slots=True)
class PresentedCredentials:
    client_id: str | None
    secret: str | None
    method: AuthMethod


def presented_credentials(request: web.Request, form: Mapping[str, str]) -> PresentedCredentials:
    """What the request offers to authenticate the client (RFC 6749 §2.3.1)."""
    header = request.headers.get("Authorization")
    body_secret = form.get("client_secret")
    if header is not None and header[:6].lower() == "basic ":
        if body_secret is not None:
            # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each request."
            raise InvalidRequest("more than one client authentication method was used")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidClient("malformed Basic credentials") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidClient("malformed Basic credentials")
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
        client_id = unquote_plus(user)
        body_id = form.get("client_id")
        if body_id is not None and body_id != client_id:
            raise InvalidRequest("client_id in the body differs from the authenticated client")
        return PresentedCredentials(client_id, unquote_plus(password), "client_secret_basic")
    if body_secret is not None:
        return PresentedCredentials(form.get("client_id"), body_secret, "client_secret_post")
    return PresentedCredentials(form.get("client_id"), None, "none")


def authenticate(client: Client, presented: PresentedCredentials) -> None:
    """Raise :class:`InvalidClient` unless ``presented`` authenticates ``client``."""
    if not client.confidential:
        if presented.secret is not None:
            raise InvalidClient("this client is public and has no secret")
        return
    if presented.secret is None or client.secret_hash is None:
        raise InvalidClient("client authentication is required")
    # Secrets are compared as hashes in constant time; the raw secret is never stored or logged.
    if not hmac.compare_digest(hash_secret(presented.secret).encode(), client.secret_hash.encode()):
        raise InvalidClient("client authentication failed")
