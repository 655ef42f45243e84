"""The upstream OpenID Connect provider (broker mode): the public API of ``sidecar.idp``.

* ``discovery``: OIDC Discovery 1.0 §4, the provider metadata fetched from the issuer and cached.
* ``client``: :class:`IdPClient`, the token endpoint (code exchange, refresh), revocation, UserInfo and the
  parsing of their answers and errors.
* ``id_token``: OIDC Core §3.1.3.7 ID token verification against the provider's signing keys (held by
  ``sidecar.keyset``, the key cache gate mode uses too; ``JWKS_*`` are its constants under their old names).
* ``transport``: the one place aiohttp is called for the IdP and its exceptions translated.
* ``errors`` and ``values``: the typed errors (:class:`IdPRejected`, :class:`IdPUnavailable`,
  :class:`IdPMisconfigured`, :class:`IdTokenInvalid`) and the values (:class:`TokenSet`,
  :class:`ProviderMetadata`, the :class:`UpstreamIdP` seam).
"""

from sidecar.idp.client import (
    DEFAULT_CLIENT_AUTH,
    DEFAULT_EXPIRES_IN_SECONDS,
    IdPClient,
    basic_authorization,
)
from sidecar.idp.discovery import DISCOVERY_CACHE_SECONDS, DISCOVERY_RETRY_SECONDS, Discovery
from sidecar.idp.errors import (
    MAX_DESCRIPTION_BYTES,
    IdPError,
    IdPMisconfigured,
    IdPRejected,
    IdPUnavailable,
    IdTokenInvalid,
    sanitize_description,
)
from sidecar.idp.id_token import DEFAULT_ID_TOKEN_LEEWAY_SECONDS, ID_TOKEN_ALGORITHMS, IdTokenVerifier
from sidecar.idp.transport import DEFAULT_IDP_TIMEOUT_SECONDS, MAX_RESPONSE_BYTES
from sidecar.idp.values import ExpirySource, ProviderMetadata, TokenAuthMethod, TokenSet, UpstreamIdP
from sidecar.keyset import KEYS_CACHE_SECONDS as JWKS_CACHE_SECONDS
from sidecar.keyset import KEYS_REFETCH_MIN_INTERVAL_SECONDS as JWKS_REFETCH_MIN_INTERVAL_SECONDS

__all__ = [
    "DEFAULT_CLIENT_AUTH",
    "DEFAULT_EXPIRES_IN_SECONDS",
    "DEFAULT_IDP_TIMEOUT_SECONDS",
    "DEFAULT_ID_TOKEN_LEEWAY_SECONDS",
    "DISCOVERY_CACHE_SECONDS",
    "DISCOVERY_RETRY_SECONDS",
    "ID_TOKEN_ALGORITHMS",
    "JWKS_CACHE_SECONDS",
    "JWKS_REFETCH_MIN_INTERVAL_SECONDS",
    "MAX_DESCRIPTION_BYTES",
    "MAX_RESPONSE_BYTES",
    "Discovery",
    "ExpirySource",
    "IdPClient",
    "IdPError",
    "IdPMisconfigured",
    "IdPRejected",
    "IdPUnavailable",
    "IdTokenInvalid",
    "IdTokenVerifier",
    "ProviderMetadata",
    "TokenAuthMethod",
    "TokenSet",
    "UpstreamIdP",
    "basic_authorization",
    "sanitize_description",
]
