"""The aiohttp application: routes, shared clients and their lifecycle (DESIGN §3, §12).

State lives in typed ``web.AppKey``s; start-up and shut-down of shared clients in ``cleanup_ctx``; nothing is
module-global, so several apps (tests, workers) coexist in one interpreter.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sidecar.audit import AUDIT, AuditLog
from sidecar.auth import Authenticator, GateAuthenticator
from sidecar.backend import BackendPool
from sidecar.challenge import MethodNotAllowed
from sidecar.config import Settings
from sidecar.cors import CorsPolicy, origin_of
from sidecar.guard import BrokerSubjects, GateSubjects, Guard, SubjectOf
from sidecar.headers import RequestHeaderPolicy
from sidecar.health import Health
from sidecar.inject import BROKER_DEFAULTS, ID_TOKEN_DEFAULTS, ClaimsResolver, HeaderTemplates
from sidecar.keys import (
    BROKER_AUTH,
    CREDENTIALS,
    HEALTH,
    IDP,
    METADATA,
    METRICS,
    PROXY,
    SESSION,
    SETTINGS,
    STORE,
)
from sidecar.metadata import WELL_KNOWN, ResourceMetadata
from sidecar.metrics import Metrics
from sidecar.proxy import Proxy, Resolver

if TYPE_CHECKING:
    # Broker and signature-verification modules pull in cryptography and PyJWT (~9 MB per worker); a gate
    # without jwks_url never needs them, so they are imported where they are used.
    from sidecar.idp import IdPClient
    from sidecar.refresh import CredentialBroker
    from sidecar.store.base import StoreLifecycle, TokenStore

log = logging.getLogger("sidecar.app")


def outbound_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for the sidecar's own calls (IdP, JWKS, client metadata documents): never the relay's."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),  # the sidecar keeps no cookies of other parties
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.backend_connect_timeout_seconds),
        trust_env=False,
        raise_for_status=False,
    )


def backend_pool(settings: Settings, metrics: Metrics | None = None) -> BackendPool:
    upstream = settings.upstream_url
    tls = ssl.create_default_context() if upstream.scheme == "https" else None
    return BackendPool(
        upstream.host or "127.0.0.1",
        upstream.port or (443 if tls else 80),
        connect_timeout=settings.backend_connect_timeout_seconds,
        tls=tls,
        max_connections=settings.backend_max_connections,
        metrics=metrics,
    )


def header_templates(settings: Settings) -> HeaderTemplates:
    if settings.inject_headers is not None:
        return HeaderTemplates(settings.inject_headers)
    if settings.mode == "gate":
        return HeaderTemplates({})
    return HeaderTemplates(ID_TOKEN_DEFAULTS if settings.client_token == "id_token" else BROKER_DEFAULTS)


def build_app(
    settings: Settings,
    metrics: Metrics | None = None,
    *,
    store: TokenStore | None = None,
    idp: IdPClient | None = None,
) -> web.Application:
    """The sidecar's application. ``store`` and ``idp`` override what the settings would build (tests)."""
    app = web.Application(client_max_size=0)
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    if store is not None:
        app[STORE] = store
    if idp is not None:
        app[IDP] = idp
    health = app[HEALTH] = Health()
    servers = settings.authorization_servers
    if settings.mode == "broker":
        from sidecar.oauth import add_routes, issuer_of  # imported here: only broker workers load the OAuth server

        servers = [issuer_of(settings)]  # the sidecar is the authorization server (RFC 9728 §2, RFC 8414 §2)
    metadata = app[METADATA] = ResourceMetadata(settings.public, servers, settings.required_scopes)
    prefix = settings.public.raw_path.rstrip("/")
    for base in dict.fromkeys(["", prefix]):
        app.router.add_get(base + WELL_KNOWN, metadata.handle)
        app.router.add_get(base + WELL_KNOWN + "/{suffix:[\\s\\S]*}", metadata.handle)
        app.router.add_route("OPTIONS", base + WELL_KNOWN, metadata.preflight)
        app.router.add_route("OPTIONS", base + WELL_KNOWN + "/{suffix:[\\s\\S]*}", metadata.preflight)
        app.router.add_get(base + "/healthz", health.healthz)
        app.router.add_get(base + "/readyz", health.readyz)
    if settings.mode == "broker":
        add_routes(app, settings)  # before the catch-all: /oauth/* and the AS metadata are answered here
    # [\s\S], not ".": an encoded line break in a path (%0A) is still a path the backend may answer.
    _refuse_other_methods(app)  # the sidecar's own paths never fall through to the relay
    app.router.add_route("*", "/{tail:[\\s\\S]*}", _proxy)
    app.cleanup_ctx.append(_lifecycle)
    return app


def _refuse_other_methods(app: web.Application) -> None:
    """Give every route of the sidecar's own (metadata, health, OAuth) a 405 for the methods it does not serve:
    without it, aiohttp would hand ``POST /oauth/authorize`` or ``DELETE /.well-known/…`` to the catch-all
    relay, and the MCP server would see requests under the sidecar's own paths."""
    # One path may span several resources (routes added apart): the union of their methods is allowed, and
    # the refusal goes on the last of them, since aiohttp tries a path's resources in order.
    last: dict[str, web.Resource] = {}
    methods: dict[str, set[str]] = {}
    for resource in app.router.resources():
        if isinstance(resource, web.Resource):
            last[resource.canonical] = resource
            methods.setdefault(resource.canonical, set()).update(route.method for route in resource)
    for canonical, resource in last.items():
        if "*" in methods[canonical] or not methods[canonical]:
            continue
        allowed = ", ".join(sorted(methods[canonical]))

        async def refuse(request: web.Request, allowed: str = allowed) -> web.Response:
            return MethodNotAllowed(request.method, allowed).response()

        resource.add_route("*", refuse)


async def _proxy(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY](request)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    audit: AuditLog | None = None
    if settings.audit_log != "off":
        audit = app[AUDIT] = AuditLog(settings.audit_log, app[METRICS])
        audit.open()
    session = outbound_session(settings)
    app[SESSION] = session
    pool = backend_pool(settings, app[METRICS])
    verifier = None
    templates = header_templates(settings)
    authenticator: Authenticator
    resolver: Resolver | None = None
    owned_store = False
    if settings.mode == "broker":
        from sidecar.broker import BrokerAuthenticator, BrokerResolver, IdTokenAuthenticator, IdTokenResolver
        from sidecar.crypto import KeyRing
        from sidecar.idp import IdPClient
        from sidecar.refresh import CredentialBroker

        if STORE not in app:
            if settings.encryption_keys is not None:
                keyring = KeyRing.from_setting(settings.encryption_keys)
            else:
                keyring = KeyRing.ephemeral()
                log.warning(
                    "no encryption_keys set: using an ephemeral key; stored grants do not survive a restart"
                )
            from sidecar.store import open_store

            acks = app[METRICS].replica_ack_timeouts
            app[STORE] = open_store(settings, keyring, on_replica_ack_timeout=acks.inc)
            owned_store = True
        store = app[STORE]
        if IDP not in app:
            app[IDP] = IdPClient.from_settings(settings, session)
        app[CREDENTIALS] = CredentialBroker(
            store=store,
            idp=app[IDP],
            metrics=app[METRICS],
            skew=settings.refresh_skew_seconds,
            lock_seconds=settings.refresh_lock_seconds,
            cache_seconds=settings.token_cache_seconds,
            max_concurrency=settings.idp_max_concurrency,
            slot_timeout=settings.idp_timeout_seconds,
            audit=audit,
        )
        authenticator = app[BROKER_AUTH] = BrokerAuthenticator(
            store=store, metrics=app[METRICS], cache_seconds=settings.token_cache_seconds
        )
        resolver = BrokerResolver(
            credentials=app[CREDENTIALS], templates=templates, required_scopes=settings.required_scopes
        )
        if settings.client_token == "id_token":
            authenticator = IdTokenAuthenticator(idp=app[IDP], metrics=app[METRICS], leeway=settings.leeway_seconds)
            resolver = IdTokenResolver(templates)
        app[HEALTH].checks["store"] = _store_check(store)
    else:
        if settings.jwks_url:
            from sidecar.jwks import JwksVerifier

            verifier = JwksVerifier(session, settings.jwks_url, issuer=settings.issuer, audience=settings.audience)
        authenticator = GateAuthenticator(
            leeway=settings.leeway_seconds,
            opaque_tokens=settings.opaque_tokens,
            required_scopes=settings.required_scopes,
            verifier=verifier,
        )
        if templates:
            resolver = ClaimsResolver(templates)
    metadata = app[METADATA]
    upstream = settings.upstream_url
    policy = RequestHeaderPolicy(
        backend_host=upstream.raw_authority,
        backend_origin=origin_of(str(upstream)),
        public_scheme=settings.public.scheme,
        strip=templates.names,
        forward_authorization=settings.forward_client_token_effective,
        trusted_proxies=settings.trusted_proxies,
    )
    guard = _guard(settings, app[METRICS], app.get(CREDENTIALS), audit)
    app[PROXY] = Proxy(
        pool=pool,
        upstream=upstream,
        authenticator=authenticator,
        header_policy=policy,
        cors=CorsPolicy(settings.public_url or "", settings.allowed_origins),
        metrics=app[METRICS],
        resource_metadata_for=metadata.metadata_url_for,
        headers_timeout=settings.backend_timeout_seconds,
        resolver=resolver,
        guard=guard,
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
        await pool.close()
        await session.close()
        if audit is not None:
            audit.close()
        if owned_store:
            await app[STORE].close()


def _guard(
    settings: Settings, metrics: Metrics, credentials: CredentialBroker | None, audit: AuditLog | None
) -> Guard | None:
    """The request guard (issue 15), or None when neither a tool policy nor an audit log is configured."""
    from sidecar.policy import compile_policy

    policy, problems = compile_policy(settings.tool_policy, settings.tool_policy_default)
    assert not problems, problems  # load_settings refused them already
    if policy is None and audit is None:
        return None
    subjects: SubjectOf = BrokerSubjects(credentials) if credentials is not None else GateSubjects()
    guard = Guard(
        policy=policy,
        hide_denied_tools=settings.hide_denied_tools,
        subject_of=subjects,
        metrics=metrics,
        audit=audit,
        audit_arguments=settings.audit_arguments == "hash",
    )
    return guard


def _store_check(store: StoreLifecycle) -> Callable[[], Awaitable[str | None]]:
    from sidecar.store.base import StoreUnavailable

    async def check() -> str | None:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    return check
