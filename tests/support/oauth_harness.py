"""Test harness for broker mode's authorization server (issue 5): a real sidecar on a loopback port in front of
a real MCP server, logging users in at the oidc-provider-mock behind the strict IdP front.

* :func:`running_sidecar` starts ``build_app`` in broker mode (memory or Redis store, with a movable clock) on
  a free port; ``public_url`` is ``http://127.0.0.1:<port>``.
* :class:`Browser` is the headless user: it keeps cookies (the ``__Host-`` consent cookie is ``Secure``; like
  browsers on loopback, it sends it over http), answers the consent page, logs in at the IdP front and stops
  at the redirect back to the MCP client, which it returns.
* :class:`CimdServer` serves client ID metadata documents over https on 127.0.0.1 with a self-signed
  certificate made at test time; its ``ssl_context`` is what the sidecar is told to trust (through the
  ``CIMD_SSL_CONTEXT`` app key, a test-only seam: there is no setting to weaken certificate checks).
* :class:`MemoryTokenStorage` is the SDK client's token storage.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from sidecar.app import build_app
from sidecar.config import Settings
from sidecar.oauth import CIMD_SSL_CONTEXT
from sidecar.store.base import TokenStore
from tests.support.backends import free_port
from tests.support.oidc import IdPFront

DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/callback"  # never contacted: the browser stops at it


class FakeClock:
    """Wall clock that tests can move forward (the store's notion of time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Sidecar:
    url: str
    app: web.Application
    settings: Settings

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"


def broker_settings(front: IdPFront, public_url: str, upstream: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "broker",
        "upstream": upstream,
        "public_url": public_url,
        "idp_issuer": front.issuer,
        "idp_client_id": front.client_id,
        "idp_client_secret": front.client_secret,
        "token_cache_seconds": 0,
        "idp_timeout_seconds": 2,
        "refresh_lock_seconds": 3,
        "cimd_allow_private_addresses": True,
        "log_format": "text",
    }
    values.update(extra)
    return Settings(**values)


@asynccontextmanager
async def running_sidecar(
    front: IdPFront,
    *,
    upstream: str = "http://127.0.0.1:9",
    store: TokenStore | None = None,
    cimd_ssl: ssl.SSLContext | None = None,
    public_path: str = "",
    **extra: Any,
) -> AsyncIterator[Sidecar]:
    port = free_port()
    public = f"http://127.0.0.1:{port}{public_path}"
    settings = broker_settings(front, public, upstream, **extra)
    app = build_app(settings, store=store)
    if cimd_ssl is not None:
        app[CIMD_SSL_CONTEXT] = cimd_ssl
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Sidecar(public, app, settings)
    finally:
        await runner.cleanup()


# --- the headless browser -------------------------------------------------------------------------------------


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.buttons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a.get("name", "")] = a.get("value", "")
        elif tag == "button" and a.get("name") == "decision":
            self.buttons.append(a.get("value", ""))


@dataclass
class ConsentForm:
    action: str
    fields: dict[str, str]
    html: str


@dataclass
class Step:
    status: int
    headers: Mapping[str, str]
    text: str
    url: str

    @property
    def location(self) -> str:
        return self.headers["Location"]


@dataclass
class Browser:
    """A cookie-keeping user agent that follows an OAuth login the way a person would."""

    front: IdPFront
    sidecar_url: str
    sub: str = "alice@example.com"
    decision: str = "approve"
    cookies: dict[str, str] = field(default_factory=dict)
    consent_pages: int = 0
    consent_texts: list[str] = field(default_factory=list)  # the consent pages shown, in order
    session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Browser:
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def _cookie_header(self, url: str) -> dict[str, str]:
        if not url.startswith(self.sidecar_url) or not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _keep_cookies(self, url: str, response: aiohttp.ClientResponse) -> None:
        if not url.startswith(self.sidecar_url):
            return
        for header in response.headers.getall("Set-Cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value

    async def request(self, method: str, url: str, *, data: Mapping[str, str] | None = None,
                      headers: Mapping[str, str] | None = None) -> Step:
        assert self.session is not None
        all_headers = {"Accept": "text/html", **self._cookie_header(url), **(headers or {})}
        async with self.session.request(method, url, data=data, headers=all_headers, allow_redirects=False) as r:
            self._keep_cookies(url, r)
            return Step(r.status, dict(r.headers), await r.text(), url)

    async def get(self, url: str) -> Step:
        return await self.request("GET", url)

    @staticmethod
    def consent_form(step: Step) -> ConsentForm:
        parser = _FormParser()
        parser.feed(step.text)
        assert parser.action, f"no consent form in the page: {step.text[:300]}"
        return ConsentForm(parser.action, parser.fields, step.text)

    async def answer(self, form: ConsentForm, decision: str | None = None, **override: str) -> Step:
        data = {**form.fields, "decision": decision or self.decision, **override}
        return await self.request("POST", form.action, data=data, headers={"Origin": self.sidecar_url})

    async def login(self, authorize_url: str) -> str:
        """Follow ``authorize_url`` to the redirect back to the client; return that URL."""
        step = await self.get(authorize_url)
        for _ in range(10):
            if step.status == 200 and "consent_id" in step.text:
                self.consent_pages += 1
                self.consent_texts.append(step.text)
                step = await self.answer(self.consent_form(step))
                continue
            if step.status in (302, 303):
                location = step.location
                if location.startswith(self.front.issuer):
                    callback = await self.front.authorize(location, sub=self.sub)
                    step = await self.get(callback)
                    continue
                if location.startswith(self.sidecar_url):
                    step = await self.get(location)
                    continue
                return location
            raise AssertionError(f"unexpected answer {step.status} from {step.url}: {step.text[:300]}")
        raise AssertionError("too many steps in the login")


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


# --- client ID metadata documents over https -----------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class CimdServer:
    """Serves JSON documents (``documents[path]``) over https on 127.0.0.1; counts fetches per path."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="cimd-")
        self.cert, self.key = _self_signed(Path(self._dir.name))
        self.documents: dict[str, Any] = {}
        self.raw: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.fetches: dict[str, int] = {}
        self.delay = 0.0  # seconds before answering (timeout tests)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """What a client must trust to fetch from this server."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client_document(self, path: str, *, redirect_uris: list[str] | None = None, **extra: Any) -> str:
        url = self.base + path
        self.documents[path] = {
            "client_id": url,
            "client_name": "CIMD Test Client",
            "redirect_uris": redirect_uris or [DEFAULT_REDIRECT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **extra,
        }
        return url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches[request.path] = self.fetches.get(request.path, 0) + 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self.raw:
            status, body, headers = self.raw[request.path]
            return web.Response(status=status, body=body, headers=headers)
        doc = self.documents.get(request.path)
        if doc is None:
            return web.Response(status=404)
        return web.json_response(doc)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._dir.cleanup()


# --- the SDK client's storage ----------------------------------------------------------------------------------


class MemoryTokenStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None
        self.history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info

