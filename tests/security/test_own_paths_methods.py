"""The sidecar's own paths answer a method they do not serve with 405 themselves: never relayed to the MCP
server (red-team finding: ``GET /oauth/token`` or ``DELETE /.well-known/...`` used to reach the backend)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.jwt_tokens import valid
from tests.support.oauth_harness import Sidecar


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/oauth/authorize", "GET, HEAD"),
        ("GET", "/oauth/token", "OPTIONS, POST"),
        ("PUT", "/oauth/register", "OPTIONS, POST"),
        ("DELETE", "/oauth/revoke", "OPTIONS, POST"),
        ("GET", "/oauth/consent", "POST"),
        ("POST", "/oauth/callback", "GET, HEAD"),
        ("DELETE", "/.well-known/oauth-protected-resource", "GET, HEAD, OPTIONS"),
        ("POST", "/.well-known/oauth-authorization-server", "GET, HEAD, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PATCH", "/readyz", "GET, HEAD"),
    ],
)
async def test_other_methods_on_own_paths_are_405_not_relayed(
    http: aiohttp.ClientSession, sidecar: Sidecar, method: str, path: str, allowed: str
) -> None:
    headers = {"Authorization": f"Bearer {valid()}"}
    async with http.request(method, sidecar.url + path, headers=headers) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == allowed
        body = await resp.json()
        assert body["error"] == "invalid_request" and method in body["error_description"]
