"""Step-up end to end in broker mode with the official MCP client: a tool needing a scope the grant lacks gets
403 insufficient_scope, the SDK re-authorizes with the challenged scope (the consent page shows it), and the
retried call succeeds. The audit trail records the login, consent, token and MCP requests, without secrets."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientMetadata
from pydantic import AnyUrl

from sidecar.app import METRICS
from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.test_sdk_end_to_end import HeadlessUser
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, MemoryTokenStorage, running_sidecar
from tests.support.oidc import IdPFront


async def test_sdk_client_steps_up_to_the_scope_a_tool_needs(
    idp_front: IdPFront, mcp_backend: str, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    store = MemoryTokenStore(KeyRing.ephemeral(), key_prefix="stepup")
    async with running_sidecar(
        idp_front,
        upstream=mcp_backend,
        store=store,
        required_scopes=["openid"],  # what the client asks for first (the PRM's scopes_supported)
        tool_policy=[{"tools": ["add"], "scopes": ["mcp:math"]}],
        audit_log=str(audit),
    ) as sidecar, Browser(idp_front, sidecar.url) as browser:
        user = HeadlessUser(browser)
        storage = MemoryTokenStorage()
        provider = OAuthClientProvider(
            server_url=sidecar.mcp_url,
            client_metadata=OAuthClientMetadata(redirect_uris=[AnyUrl(DEFAULT_REDIRECT_URI)], client_name="step-up"),
            storage=storage,
            redirect_handler=user.redirect,
            callback_handler=user.callback,
        )
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http, streamable_http_client(
            sidecar.mcp_url, http_client=http
        ) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert (await session.call_tool("echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
            assert user.logins == 1
            first = storage.tokens
            assert first is not None and "mcp:math" not in (first.scope or "").split()

            result = await session.call_tool("add", {"a": 2, "b": 3})  # 403 -> re-authorize -> retried
            assert "".join(getattr(b, "text", "") for b in result.content) == "5"
            assert user.logins == 2
            assert browser.consent_pages == 2  # the new scope was put to the user again
            assert "mcp:math" not in browser.consent_texts[0] and "mcp:math" in browser.consent_texts[1]
            second = storage.tokens
            assert second is not None and "mcp:math" in (second.scope or "").split()
            assert {"openid", "mcp:math"} <= set((second.scope or "").split())  # the old scopes are kept
        registry = sidecar.app[METRICS].registry
        assert registry.get_sample_value(
            "mcp_sidecar_tool_calls_total", {"tool": "add", "decision": "insufficient_scope"}
        ) == 1
        assert registry.get_sample_value("mcp_sidecar_tool_calls_total", {"tool": "add", "decision": "allow"}) == 1
    text = audit.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    kinds = [e["event"] for e in events]
    for kind in ("oauth.consent", "oauth.login", "oauth.token", "mcp.request"):
        assert kind in kinds, kinds
    logins = [e for e in events if e["event"] == "oauth.login"]
    assert len(logins) == 2 and logins[1]["sub"] and "mcp:math" in logins[1]["scopes"]
    denied = [e for e in events if e["event"] == "mcp.request" and e["status"] == 403]
    assert len(denied) == 1 and denied[0]["tool"] == "add" and denied[0]["reason"] == "insufficient_scope"
    assert denied[0]["sub"] == logins[0]["sub"] and denied[0]["client_id"] == logins[0]["client_id"]
    for secret in (first.access_token, second.access_token, first.refresh_token, second.refresh_token):
        assert secret and secret not in text
