"""Raw-HTTP drivers of the authorization server for the negative-case tests (no SDK in between)."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp

from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, Sidecar, query_of, s256


@dataclass
class Registered:
    client_id: str
    client_secret: str | None
    redirect_uri: str


@dataclass
class Code:
    code: str
    verifier: str
    state: str
    redirect: str
    params: dict[str, str]


async def register(http: aiohttp.ClientSession, sidecar: Sidecar, **meta: Any) -> Registered:
    body = {"redirect_uris": [DEFAULT_REDIRECT_URI], "client_name": "Test Client", **meta}
    async with http.post(sidecar.url + "/oauth/register", json=body) as r:
        data = await r.json()
        assert r.status == 201, data
    return Registered(data["client_id"], data.get("client_secret"), body["redirect_uris"][0])


def authorize_url(sidecar: Sidecar, client_id: str, *, redirect_uri: str = DEFAULT_REDIRECT_URI,
                  verifier: str | None = None, state: str = "client-state", **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        "code_challenge": s256(verifier or "v" * 43),
        "code_challenge_method": "S256",
        **extra,
    }
    return sidecar.url + "/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None})


async def obtain_code(browser: Browser, sidecar: Sidecar, client_id: str, *,
                      redirect_uri: str = DEFAULT_REDIRECT_URI, **extra: str) -> Code:
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(8)
    final = await browser.login(
        authorize_url(sidecar, client_id, redirect_uri=redirect_uri, verifier=verifier, state=state, **extra)
    )
    params = query_of(final)
    assert "code" in params, final
    return Code(params["code"], verifier, state, final, params)


def basic(client: Registered) -> dict[str, str]:
    """RFC 6749 §2.3.1 Basic credentials (id and secret form-urlencoded first)."""
    pair = f"{quote_plus(client.client_id)}:{quote_plus(client.client_secret or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def token(http: aiohttp.ClientSession, sidecar: Sidecar, client: Registered | None, form: dict[str, str],
                *, use_basic: bool = True) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    data = dict(form)
    if client is not None and client.client_secret is not None and use_basic:
        headers = basic(client)
    elif client is not None:
        data.setdefault("client_id", client.client_id)
    async with http.post(sidecar.url + "/oauth/token", data=data, headers=headers) as r:
        return r.status, await r.json(), dict(r.headers)
