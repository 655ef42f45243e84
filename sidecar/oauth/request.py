"""The validated authorization request that travels from ``/authorize`` through consent and the upstream
login to ``/callback`` (inside encrypted, single-use store records: ``put_pending``/``take_pending``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.oauth.common import with_params
from sidecar.oauth.errors import NO_STORE, Problem

REQUEST_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str | None
    client_name: str  # what the consent page showed (display only)

    def to_payload(self) -> dict[str, Any]:
        return {
            "rv": REQUEST_FORMAT_VERSION,
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "scopes": list(self.scopes),
            "resource": self.resource,
            "client_name": self.client_name,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AuthorizationRequest:
        if payload.get("rv") != REQUEST_FORMAT_VERSION:
            raise ValueError("unsupported authorization request format")
        state = payload.get("state")
        resource = payload.get("resource")
        return cls(
            client_id=str(payload["client_id"]),
            redirect_uri=str(payload["redirect_uri"]),
            state=state if isinstance(state, str) else None,
            code_challenge=str(payload["code_challenge"]),
            scopes=tuple(str(s) for s in payload["scopes"]),
            resource=resource if isinstance(resource, str) else None,
            client_name=str(payload.get("client_name", "")),
        )


def redirect_to_client(
    redirect_uri: str, params: Mapping[str, str | None], *, issuer: str, status: int = 302
) -> web.Response:
    """An authorization response (RFC 6749 §4.1.2 / §4.1.2.1) with ``iss`` (RFC 9207 §2: "the authorization
    server MUST include the iss parameter" in authorization responses once it advertises support)."""
    location = with_params(redirect_uri, {**params, "iss": issuer})
    return web.Response(status=status, headers={**NO_STORE, "Location": location})


def error_to_client(
    redirect_uri: str, state: str | None, err: Problem, *, issuer: str, status: int = 302
) -> web.Response:
    return redirect_to_client(
        redirect_uri,
        {"error": err.error, "error_description": err.description, "state": state},
        issuer=issuer,
        status=status,
    )
