"""OpenID Connect Discovery 1.0 §4: the provider metadata, fetched from the issuer and cached.

The metadata is read from ``<issuer>/.well-known/openid-configuration`` (§4.1, a terminating ``/`` removed
first) and its ``issuer`` must equal the configured issuer exactly (§4.3). Cached for
``DISCOVERY_CACHE_SECONDS``; a failed refetch keeps the older document for ``DISCOVERY_RETRY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.idp.errors import IdPMisconfigured, IdPUnavailable, sanitize_description
from sidecar.idp.transport import IdPTransport
from sidecar.idp.values import ProviderMetadata

log = logging.getLogger("sidecar.idp")

# Provider metadata changes on the scale of releases; an hour keeps a moved endpoint from sticking for long.
DISCOVERY_CACHE_SECONDS = 3600.0
# After a failed refetch the cached metadata is used for this long before the next attempt, so an outage of
# the discovery URL costs one request a minute, not one per token request.
DISCOVERY_RETRY_SECONDS = 60.0


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


class Discovery:
    """The provider metadata of one issuer; ``monotonic`` measures the cache's age."""

    def __init__(
        self, transport: IdPTransport, issuer: str, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._transport = transport
        self._issuer = issuer
        self._monotonic = monotonic
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> ProviderMetadata:
        """The provider metadata, cached for ``DISCOVERY_CACHE_SECONDS``.

        When a refetch fails with :class:`IdPUnavailable` and an older document is cached, the older one is
        used (and the failure logged): endpoints rarely move, an outage of the discovery URL should not
        stop refreshes.
        """
        if self._metadata is not None and self._monotonic() - self._metadata_at < DISCOVERY_CACHE_SECONDS:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and self._monotonic() - self._metadata_at < DISCOVERY_CACHE_SECONDS:
                return self._metadata
            try:
                metadata = await self._fetch()
            except IdPMisconfigured:
                raise
            except IdPUnavailable as exc:
                if self._metadata is None:
                    raise
                log.warning("idp discovery refetch failed, using the cached metadata: %s", exc)
                self._metadata_at = self._monotonic() - DISCOVERY_CACHE_SECONDS + DISCOVERY_RETRY_SECONDS
                return self._metadata
            self._metadata, self._metadata_at = metadata, self._monotonic()
            return metadata

    async def _fetch(self) -> ProviderMetadata:
        # OIDC Discovery §4.1: "If the Issuer value contains a path component, any terminating / MUST be
        # removed before appending /.well-known/openid-configuration."
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self._transport.get_json(url, "discovery")
        # OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL that was used as
        # the prefix to /.well-known/openid-configuration to retrieve the configuration information."
        if doc.get("issuer") != self._issuer:
            shown = doc.get("issuer")
            raise IdPMisconfigured(
                f"the discovery document names issuer {sanitize_description(str(shown))!r}, "
                f"not the configured {self._issuer!r} (they must be identical)"
            )
        token_endpoint = _optional_str(doc, "token_endpoint")
        jwks_uri = _optional_str(doc, "jwks_uri")
        if token_endpoint is None or jwks_uri is None:
            raise IdPMisconfigured("the discovery document lacks token_endpoint or jwks_uri")
        return ProviderMetadata(
            issuer=self._issuer,
            token_endpoint=token_endpoint,
            jwks_uri=jwks_uri,
            authorization_endpoint=_optional_str(doc, "authorization_endpoint"),
            userinfo_endpoint=_optional_str(doc, "userinfo_endpoint"),
            revocation_endpoint=_optional_str(doc, "revocation_endpoint"),
            end_session_endpoint=_optional_str(doc, "end_session_endpoint"),
            code_challenge_methods_supported=_str_tuple(doc.get("code_challenge_methods_supported")),
            token_endpoint_auth_methods_supported=_str_tuple(doc.get("token_endpoint_auth_methods_supported")),
            id_token_signing_alg_values_supported=_str_tuple(doc.get("id_token_signing_alg_values_supported")),
        )
