"""Provider profiles: how each upstream IdP is asked for a refresh token.

The quirk this file exists for (seed 000): asking for offline access is not portable.

* OpenID Connect Core 1.0 §11 defines the ``offline_access`` scope for it (Auth0, Okta, Keycloak, Azure AD
  and most others honour it).
* Google rejects that scope outright (``invalid_scope``: "Some requested scopes were invalid.
  invalid=[offline_access]") and wants ``access_type=offline`` instead. So Google gets ``access_type`` and
  never the scope; everyone else gets the scope and never ``access_type``.
* OIDC Core §11 says "a prompt parameter value of consent MUST be used unless other conditions for
  processing the request permitting offline access to the requested resources are in place"; the common
  providers have such conditions (client policy, earlier consent), and ``prompt=consent`` makes Google
  show its offline-access consent screen on every login. Google mints the refresh token at the first
  interactive consent and keeps honouring it on silent sign-in, so the prompt is sent only when the
  operator asks for it (``force_consent``, e.g. after rotating the upstream client).

Everything here is pure: the ``/authorize`` handler applies the result to the upstream request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from yarl import URL

Provider = Literal["google", "generic"]
ProviderSetting = Literal["auto", "google", "generic"]

OFFLINE_ACCESS_SCOPE = "offline_access"
# Hosts whose issuer is Google's. Google's ID tokens may carry the scheme-less form as ``iss``.
GOOGLE_ISSUER_HOSTS = frozenset({"accounts.google.com"})


def detect_provider(issuer: str | None, override: ProviderSetting | str = "auto") -> Provider:
    """``google`` or ``generic``; ``override`` (the ``idp_provider`` setting) wins unless it is ``auto``.

    ``auto`` recognizes Google by the issuer's host (``https://accounts.google.com`` or the bare
    ``accounts.google.com``), compared case-insensitively.
    """
    if override == "google":
        return "google"
    if override == "generic":
        return "generic"
    if override != "auto":
        raise ValueError(f"unknown idp_provider {override!r}: use auto, google or generic")
    if not issuer:
        return "generic"
    text = issuer.strip()
    try:
        host = URL(text).host if "://" in text else text.split("/", 1)[0]
    except ValueError:
        return "generic"
    if host is not None and host.lower().rstrip(".") in GOOGLE_ISSUER_HOSTS:
        return "google"
    return "generic"


def offline_access_params(
    provider: Provider, scopes: Sequence[str], force_consent: bool
) -> tuple[list[str], dict[str, str]]:
    """The scopes and extra ``/authorize`` parameters that ask ``provider`` for a refresh token.

    Returns ``(scopes, extra_params)``; the scopes keep their order, without duplicates.
    """
    ordered: list[str] = []
    for scope in scopes:
        if scope and scope not in ordered:
            ordered.append(scope)
    params: dict[str, str] = {}
    if provider == "google":
        # Google answers invalid_scope to offline_access: never send it.
        ordered = [s for s in ordered if s != OFFLINE_ACCESS_SCOPE]
        params["access_type"] = "offline"
    elif OFFLINE_ACCESS_SCOPE not in ordered:
        ordered.append(OFFLINE_ACCESS_SCOPE)
    if force_consent:
        params["prompt"] = "consent"
    return ordered, params
