"""Provider profiles: how each upstream IdP is asked for a refresh token.

The quirk this file exists for: asking for offline access is not portable. Each profile encodes its
provider's documented rule (the README's provider table names the sources):

* ``generic``: OpenID Connect Core 1.0 §11: "When an offline_access scope value is requested, a prompt
  parameter value of consent MUST be used unless other conditions for processing the request permitting
  offline access to the requested resources are in place ... The OP MUST ignore the offline_access request
  unless the Client is using a response_type value that would result in an Authorization Code being
  returned". A strict provider (panva's certified ``oidc-provider``) drops ``offline_access`` without
  ``prompt=consent`` and issues no refresh token, so the generic profile sends both.
* ``google``: Google's "Using OAuth 2.0 for Web Server Applications" (``access_type=offline``; the refresh
  token is returned only on the first consent unless ``prompt=consent`` asks again) and Google's OpenID
  Connect page (``offline_access`` is not a Google scope: ``invalid_scope``). So ``access_type=offline``
  plus ``prompt=consent``, never the scope.
* ``entra``: Microsoft identity platform, "Refresh tokens" / "OpenID Connect on the Microsoft identity
  platform": request the ``offline_access`` scope; ``prompt=consent`` would show the consent dialog on every
  sign-in and is not needed.
* ``okta``: Okta, "Refresh access tokens and rotate refresh tokens": the ``offline_access`` scope with the
  Refresh Token grant enabled on the app; no prompt needed.
* ``auth0``: Auth0, "Get Refresh Tokens": the ``offline_access`` scope with "Allow Offline Access" on the
  API; no prompt needed (first-party apps skip consent).
* ``keycloak``: Keycloak server admin guide, "Offline access": the ``offline_access`` scope (the client
  scope of that name, on by default) yields an offline token; no prompt needed.

``force_consent`` overrides the profile: ``true`` always sends ``prompt=consent``, ``false`` never does,
unset (the default) lets the profile decide. Everything here is pure: the ``/authorize`` handler applies
the result to the upstream request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from yarl import URL

Provider = Literal["google", "entra", "okta", "auth0", "keycloak", "generic"]
ProviderSetting = Literal["auto", "google", "entra", "okta", "auth0", "keycloak", "generic"]
PROVIDERS: tuple[Provider, ...] = ("google", "entra", "okta", "auth0", "keycloak", "generic")

OFFLINE_ACCESS_SCOPE = "offline_access"
# Hosts whose issuer is Google's. Google's ID tokens may carry the scheme-less form as ``iss``.
GOOGLE_ISSUER_HOSTS = frozenset({"accounts.google.com"})
ENTRA_ISSUER_HOSTS = frozenset({"login.microsoftonline.com", "sts.windows.net", "login.microsoftonline.us"})
OKTA_HOST_SUFFIXES = (".okta.com", ".oktapreview.com", ".okta-emea.com")
AUTH0_HOST_SUFFIXES = (".auth0.com",)


@dataclass(frozen=True, slots=True)
class Profile:
    """How one provider is asked for a refresh token."""

    offline_scope: bool  # send the offline_access scope (OIDC Core §11)
    access_type_offline: bool  # send access_type=offline (Google)
    prompt_consent: bool  # send prompt=consent unless force_consent says otherwise


PROFILES: dict[Provider, Profile] = {
    "generic": Profile(offline_scope=True, access_type_offline=False, prompt_consent=True),
    "google": Profile(offline_scope=False, access_type_offline=True, prompt_consent=True),
    "entra": Profile(offline_scope=True, access_type_offline=False, prompt_consent=False),
    "okta": Profile(offline_scope=True, access_type_offline=False, prompt_consent=False),
    "auth0": Profile(offline_scope=True, access_type_offline=False, prompt_consent=False),
    "keycloak": Profile(offline_scope=True, access_type_offline=False, prompt_consent=False),
}


def _host_of(issuer: str) -> tuple[str | None, str]:
    text = issuer.strip()
    try:
        if "://" in text:
            url = URL(text)
            return url.host, url.path
        host, _, path = text.partition("/")
        return host, "/" + path
    except ValueError:
        return None, ""


def detect_provider(issuer: str | None, override: ProviderSetting | str = "auto") -> Provider:
    """The profile for ``issuer``; ``override`` (the ``idp_provider`` setting) wins unless it is ``auto``.

    ``auto`` recognizes Google, Entra ID, Okta and Auth0 by the issuer's host and Keycloak by its
    ``/realms/<name>`` path; anything else is ``generic``.
    """
    if override in PROVIDERS:
        return override
    if override != "auto":
        raise ValueError(f"unknown idp_provider {override!r}: use auto or one of {', '.join(PROVIDERS)}")
    if not issuer:
        return "generic"
    host, path = _host_of(issuer)
    if host is None:
        return "generic"
    host = host.lower().rstrip(".")
    if host in GOOGLE_ISSUER_HOSTS:
        return "google"
    if host in ENTRA_ISSUER_HOSTS:
        return "entra"
    if host.endswith(OKTA_HOST_SUFFIXES):
        return "okta"
    if host.endswith(AUTH0_HOST_SUFFIXES):
        return "auth0"
    if "/realms/" in path:
        return "keycloak"
    return "generic"


def offline_access_params(
    provider: Provider, scopes: Sequence[str], force_consent: bool | None = None
) -> tuple[list[str], dict[str, str]]:
    """The scopes and extra ``/authorize`` parameters that ask ``provider`` for a refresh token.

    Returns ``(scopes, extra_params)``; the scopes keep their order, without duplicates.
    """
    profile = PROFILES[provider]
    ordered: list[str] = []
    for scope in scopes:
        if scope and scope not in ordered:
            ordered.append(scope)
    params: dict[str, str] = {}
    if profile.offline_scope:
        if OFFLINE_ACCESS_SCOPE not in ordered:
            ordered.append(OFFLINE_ACCESS_SCOPE)
    else:
        # Google answers invalid_scope to offline_access: never send it.
        ordered = [s for s in ordered if s != OFFLINE_ACCESS_SCOPE]
    if profile.access_type_offline:
        params["access_type"] = "offline"
    prompt = profile.prompt_consent if force_consent is None else force_consent
    if prompt:
        params["prompt"] = "consent"
    return ordered, params
