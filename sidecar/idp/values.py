"""The values the IdP client returns (token sets, provider metadata) and the narrow seam its callers use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

TokenAuthMethod = Literal["client_secret_basic", "client_secret_post"]
ExpirySource = Literal["response", "jwt", "default"]


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A successful token response (RFC 6749 §5.1), normalized.

    ``refresh_token`` is ``None`` when the IdP returned none: the caller keeps the refresh token it sent
    (RFC 6749 §6, design §7.3). ``expires_at`` is wall-clock epoch seconds; ``expires_in_source`` says
    where the lifetime came from: the response, the access token's own ``exp`` claim, or
    ``DEFAULT_EXPIRES_IN_SECONDS``. Token values never appear in the repr.
    """

    access_token: str
    token_type: str
    expires_in: int
    expires_at: float
    expires_in_source: ExpirySource
    refresh_token: str | None = None
    id_token: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token='***', token_type={self.token_type!r}, expires_in={self.expires_in}, "
            f"expires_in_source={self.expires_in_source!r}, "
            f"refresh_token={'***' if self.refresh_token else None}, "
            f"id_token={'***' if self.id_token else None}, scope={self.scope!r})"
        )


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The fields of the discovery document (OIDC Discovery §3) the sidecar uses."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    authorization_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    end_session_endpoint: str | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    id_token_signing_alg_values_supported: tuple[str, ...] = ()


class UpstreamIdP(Protocol):
    """The narrow seam the refresh engine and the OAuth endpoints depend on (fakes implement it in tests)."""

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> TokenSet: ...

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str | None) -> TokenSet: ...

    async def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict[str, Any]: ...
