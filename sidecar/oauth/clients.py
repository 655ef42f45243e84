"""Clients of the authorization server: the record, redirect URI rules, and client authentication.

* RFC 6749 §3.1.2: a redirect URI is absolute and "MUST NOT include a fragment component". §3.1.2.3 and
  RFC 9700 §4.1.1: redirect URIs are compared by exact string match.
* RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at the time of the request
  for loopback IP redirect URIs" (``http://127.0.0.1``, ``http://[::1]``): for those only the port may vary.
  §8.3: plain ``http`` is allowed for loopback only. §7.1: native apps use a private-use scheme, which it
  says should be in reverse-domain form (``com.example.app:``); real MCP clients register single-word schemes
  (Cursor: ``cursor://…``), so any private-use scheme is accepted except those a browser or the system gives
  another meaning (``javascript:``, ``data:``, ``file:``, ...: :data:`FORBIDDEN_SCHEMES`). PKCE (required)
  is what protects a custom-scheme redirect from another app claiming the scheme (RFC 8252 §8.1).
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
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote_plus, urlsplit

import yarl
from aiohttp import web

from sidecar.oauth.errors import InvalidClient, InvalidRequest

ClientKind = Literal["registered", "metadata_document"]
AuthMethod = Literal["none", "client_secret_basic", "client_secret_post"]
AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("none", "client_secret_basic", "client_secret_post")
GRANT_TYPES: Final = ("authorization_code", "refresh_token")
# Loopback hosts that may use plain http (RFC 8252 §8.3); only the IP literals may vary their port (§7.3).
LOOPBACK_NAMES: Final = frozenset({"localhost"})
LOOPBACK_IPS: Final = frozenset({"127.0.0.1", "[::1]"})
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
        """What the consent page calls the client: the document's host for CIMD (the only verified fact, in
        ASCII: punycode, never a look-alike Unicode spelling), else the self-asserted registered name."""
        if self.kind == "metadata_document":
            return host_forms(self.client_id)[0]
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


# Unicode general categories never shown in a name: controls, format characters (bidi overrides and
# isolates, zero-width joiners, soft hyphens...), surrogates, private use, unassigned, line/paragraph
# separators. A bidi override can make "moc.elgoog" read as "google.com" on the consent page.
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean_name(value: object, limit: int) -> str | None:
    """A self-asserted name fit for display: invisible and direction-changing characters removed, at most
    ``limit`` characters, ``None`` when nothing is left."""
    if not isinstance(value, str):
        return None
    kept = "".join(ch for ch in value if unicodedata.category(ch) not in _HIDDEN_CATEGORIES)
    return kept.strip()[:limit] or None


def host_forms(url: str) -> tuple[str, str | None]:
    """The URL's host as shown to a person: its ASCII form (IDNA punycode, what the browser and DNS use), and
    the Unicode form only when it differs (``None`` otherwise). A host that cannot be converted is shown with
    its non-ASCII characters escaped."""
    try:
        parsed = yarl.URL(url)
        ascii_host = parsed.raw_host or ""
        unicode_host = parsed.host or ""
    except (ValueError, UnicodeError):
        host = urlsplit(url).hostname or url
        return host.encode("ascii", "backslashreplace").decode("ascii"), None
    if not ascii_host.isascii():
        return ascii_host.encode("ascii", "backslashreplace").decode("ascii"), None
    return ascii_host, (unicode_host if unicode_host != ascii_host else None)


def ascii_url(url: str) -> str:
    """``url`` with its host in punycode, for display (never a Unicode look-alike)."""
    try:
        return str(yarl.URL(url))
    except (ValueError, UnicodeError):
        return url.encode("ascii", "backslashreplace").decode("ascii")


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# --- redirect URIs ----------------------------------------------------------------------------------------
#
# Browsers parse redirects with the WHATWG URL Standard, which differs from RFC 3986 readers such as urlsplit:
# it treats "\" as "/" in http(s) URLs, strips tab/CR/LF, lowercases the scheme, resolves "." and ".." (and
# their percent-encoded forms) in paths, and reads hosts like "127.1" or "0x7f.0.0.1" as IPv4 addresses. A URI
# that two readers see differently is how a redirect goes to a host nobody registered. So a redirect URI is
# accepted only in a plain form on which every reader agrees: lowercase scheme; for http(s), an authority
# that is just a lowercase ASCII host name, a canonical dotted IPv4 address or a canonical bracketed IPv6
# address, plus an optional port; a path and query made of RFC 3986 characters only (no backslash, no
# whitespace or control characters, no non-ASCII, no userinfo, no fragment, no dot segments). The test suite
# checks this against a WHATWG parser (ada-url): for every accepted URI, the browser's host and path are the
# plain ones.

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
# RFC 3986 pchar (unreserved, sub-delims, ":" "@") plus "/", and "%XX"; "?" starts the query.
_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
# The query: the same characters plus "?", minus "'" (WHATWG percent-encodes it in special-scheme queries).
_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)")
_DOT_SEGMENT = re.compile(r"(?:\.|%2e){1,2}", re.IGNORECASE)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# The authority of a loopback IP literal redirect URI, whose port alone may vary (RFC 8252 §7.3).
_LOOPBACK_AUTHORITY = re.compile(r"http://(127\.0\.0\.1|\[::1\])(?::[0-9]{1,5})?(?=[/?]|$)")


@dataclass(frozen=True, slots=True)
class PlainUri:
    """A redirect URI in the plain form every reader agrees on (see :func:`parse_plain_uri`)."""

    scheme: str
    host: str  # "" for a private-use URI without authority
    port: int | None
    path: str
    query: str | None


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            ip = ipaddress.IPv6Address(inner)
        except ValueError:
            return "redirect URI has an invalid IPv6 address"
        # WHATWG serializes IPv6 in RFC 5952 form; anything else reads differently.
        return None if str(ip) == inner else "write the IPv6 address in its short lowercase form (RFC 5952)"
    if _IPV4.fullmatch(host):
        return None
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "redirect URI hosts must be lowercase ASCII names (use punycode for international names)"
    # WHATWG reads a host whose last label is a number as an IPv4 address ("127.1", "0x7f.0.0.1").
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "redirect URI hosts must be written as a plain dotted IPv4 address or a name"
    for label in labels:
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return "redirect URI host has an invalid punycode label"
            if not decoded or decoded.isascii():
                return "redirect URI host has an invalid punycode label"
    return None


def parse_plain_uri(uri: str) -> PlainUri | str:
    """The URI's parts, or why it is not in the plain form (a message safe to show)."""
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        return "redirect URI too long"
    if not uri.isascii():
        return "redirect URIs must be ASCII (percent-encode other characters, punycode for hosts)"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "redirect URIs must not contain spaces or control characters"
    if "\\" in uri:
        return "redirect URIs must not contain backslashes"
    if "#" in uri:
        # RFC 6749 §3.1.2: "The endpoint URI MUST NOT include a fragment component."
        return "redirect URIs must not contain a fragment"
    scheme, colon, rest = uri.partition(":")
    if not colon or not scheme:
        return "redirect URIs must be absolute"
    if not _SCHEME.fullmatch(scheme):
        return "redirect URI schemes must be lowercase"
    host, port = "", None
    if rest.startswith("//"):
        rest = rest[2:]
        end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, rest = rest[:end], rest[end:]
        if "@" in authority:
            return "redirect URIs must not contain user information"
        if "%" in authority:
            return "redirect URI hosts must not be percent-encoded"
        host = authority
        if not authority.endswith("]") and ":" in authority:
            host, _, port_text = authority.rpartition(":")
            if not port_text.isdigit() or (len(port_text) > 1 and port_text[0] == "0") or int(port_text) > 65535:
                return "redirect URI has an invalid port"
            port = int(port_text)
            if port == _DEFAULT_PORTS.get(scheme):
                return "leave out the scheme's default port in redirect URIs"
        if not host:
            return "redirect URIs need a host"
        problem = _host_problem(host)
        if problem is not None:
            return problem
    elif scheme in _DEFAULT_PORTS:
        return "http(s) redirect URIs must be written scheme://host/path"
    path, question, query = rest.partition("?")
    if not _PATH.fullmatch(path) or (question and not _QUERY.fullmatch(query)):
        return "redirect URIs may only contain URI characters (percent-encode the others)"
    if host and path and not path.startswith("/"):
        return "redirect URI is not a valid URI"
    if any(_DOT_SEGMENT.fullmatch(segment) for segment in path.split("/")):
        return "redirect URIs must not contain . or .. path segments"
    if not host and (path.startswith("//") or not path):
        return "redirect URI is not a valid URI"
    return PlainUri(scheme, host, port, path, query if question else None)


def _loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Schemes that are never a native app's redirect: a browser runs, reads or navigates them itself, or the system
# hands them to another program (mail, phone, browser internals).
FORBIDDEN_SCHEMES = frozenset({
    "javascript", "data", "file", "vbscript", "blob", "about", "filesystem", "view-source", "ftp", "ws", "wss",
    "mailto", "tel", "sms", "intent", "chrome", "chrome-extension", "moz-extension", "edge", "opera",
})


def is_private_use(uri: object) -> bool:
    """A syntactically plain redirect URI whose scheme is neither http nor https."""
    if not isinstance(uri, str):
        return False
    parts = parse_plain_uri(uri)
    return not isinstance(parts, str) and parts.scheme not in ("http", "https")


def redirect_uri_problem(uri: object, application_type: str) -> str | None:
    """Why ``uri`` cannot be registered or requested, or ``None`` when it can."""
    if not isinstance(uri, str) or not uri:
        return "each redirect URI must be a non-empty string"
    parts = parse_plain_uri(uri)
    if isinstance(parts, str):
        return parts
    if parts.scheme == "https":
        return None
    if parts.scheme == "http":
        # RFC 8252 §8.3 / RFC 9700 §4.1.1: plain http only back to the user's own machine.
        if parts.host in LOOPBACK_NAMES or parts.host in LOOPBACK_IPS:
            return None
        return "http redirect URIs are allowed on loopback only (127.0.0.1, [::1], localhost); use https"
    if application_type != "native":
        return "web clients must use https (or http on loopback) redirect URIs"
    # RFC 8252 §7.1 private-use schemes ("com.example.app:/cb"; single-word ones such as "cursor://" too).
    if parts.scheme in FORBIDDEN_SCHEMES:
        return f"{parts.scheme}: is not a redirect URI scheme an app can receive; use https or a private-use scheme"
    return None


def _without_loopback_port(uri: str) -> str | None:
    """``uri`` with the port of its loopback IP literal removed, or ``None`` if it is not such a URI."""
    match = _LOOPBACK_AUTHORITY.match(uri)
    if match is None:
        return None
    return f"http://{match.group(1)}{uri[match.end():]}"


def loopback_key(uri: str) -> str:
    """What identifies a redirect URI for remembered consent: the URI, port-free for loopback IP literals."""
    return _without_loopback_port(uri) or uri


def redirect_uri_matches(registered: Sequence[str], requested: str) -> bool:
    """Exact string match, except that a loopback IP literal may change its port (RFC 8252 §7.3): then the two
    are compared as strings with only the port removed. The requested URI must itself be in the plain form."""
    if isinstance(parse_plain_uri(requested), str):
        return False
    for candidate in registered:
        if hmac.compare_digest(candidate.encode(), requested.encode()):
            return True
    bare = _without_loopback_port(requested)
    if bare is None:
        return False
    for candidate in registered:
        other = _without_loopback_port(candidate)
        if other is not None and hmac.compare_digest(other.encode(), bare.encode()):
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
