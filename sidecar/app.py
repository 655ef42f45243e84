"""The aiohttp application: routes, shared clients and their lifecycle (DESIGN §3, §12).

State lives in typed ``web.AppKey``s; start-up and shut-down of shared clients in ``cleanup_ctx``; nothing is
module-global, so several apps (tests, workers) coexist in one interpreter.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sidecar.auth import GateAuthenticator
from sidecar.config import Settings
from sidecar.cors import CorsPolicy, origin_of
from sidecar.headers import RequestHeaderPolicy
from sidecar.health import Health
from sidecar.jwks import JwksVerifier
from sidecar.metadata import WELL_KNOWN, ResourceMetadata
from sidecar.metrics import Metrics
from sidecar.proxy import Proxy

log = logging.getLogger("sidecar.app")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
HEALTH = web.AppKey("health", Health)
PROXY = web.AppKey("proxy", Proxy)
METADATA = web.AppKey("metadata", ResourceMetadata)

# Backend keep-alive connections are dropped after this idle time: below uvicorn's 5 s default, so the
# sidecar never reuses a connection the backend is closing at the same moment (a spurious 502).
BACKEND_KEEPALIVE_SECONDS = 4.0
# aiohttp adds these when absent; a transparent proxy must not (an added Accept-Encoding would make the
# backend compress a body for a client that never asked for it).
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


def backend_session(settings: Settings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # SSE streams hold connections for hours; a pool cap would stall unrelated requests
        keepalive_timeout=BACKEND_KEEPALIVE_SECONDS,
        enable_cleanup_closed=False,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),  # cookies pass through; the proxy keeps none
        auto_decompress=False,  # bodies pass as the backend encoded them
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=settings.backend_connect_timeout_seconds,
            sock_connect=settings.backend_connect_timeout_seconds,
            sock_read=None,  # never a read timeout on bodies: SSE streams idle between keep-alives
        ),
        trust_env=False,
        raise_for_status=False,
    )


def build_app(settings: Settings, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=0)
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    health = app[HEALTH] = Health()
    metadata = app[METADATA] = ResourceMetadata(
        settings.public, settings.authorization_servers, settings.required_scopes
    )
    prefix = settings.public.raw_path.rstrip("/")
    for base in dict.fromkeys(["", prefix]):
        app.router.add_get(base + WELL_KNOWN, metadata.handle)
        app.router.add_get(base + WELL_KNOWN + "/{suffix:.*}", metadata.handle)
        app.router.add_get(base + "/healthz", health.healthz)
        app.router.add_get(base + "/readyz", health.readyz)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY](request)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    session = backend_session(settings)
    app[SESSION] = session
    verifier = None
    if settings.jwks_url:
        verifier = JwksVerifier(session, settings.jwks_url, issuer=settings.issuer, audience=settings.audience)
    authenticator = GateAuthenticator(
        leeway=settings.leeway_seconds,
        opaque_tokens=settings.opaque_tokens,
        required_scopes=settings.required_scopes,
        verifier=verifier,
    )
    metadata = app[METADATA]
    upstream = settings.upstream_url
    policy = RequestHeaderPolicy(
        backend_host=upstream.raw_authority,
        backend_origin=origin_of(str(upstream)),
        public_scheme=settings.public.scheme,
        strip=(settings.inject_headers or {}).keys(),
        forward_authorization=settings.forward_client_token_effective,
    )
    app[PROXY] = Proxy(
        session=session,
        upstream=upstream,
        authenticator=authenticator,
        header_policy=policy,
        cors=CorsPolicy(settings.public_url or "", settings.allowed_origins),
        metrics=app[METRICS],
        resource_metadata_for=metadata.metadata_url_for,
        headers_timeout=settings.backend_timeout_seconds,
    )
    health = app[HEALTH]
    health.ready = True
    log.info(
        "sidecar ready",
        extra={
            "mode": settings.mode,
            "upstream": str(upstream),
            "public_url": settings.public_url,
            "signature_verification": bool(verifier),
        },
    )
    try:
        yield
    finally:
        health.ready = False
        await session.close()
