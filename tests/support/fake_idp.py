"""A scripted upstream IdP (the ``UpstreamIdP`` protocol) for tests that are not about the IdP itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sidecar.idp import TokenSet


class ScriptedIdP:
    """Refresh answers are scripted: counts calls, can be slow, can fail with any exception."""

    def __init__(self, lifetime: int = 3600) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.delay = 0.0
        self.rotate = True
        self.lifetime = lifetime
        self.id_tokens = False  # answer refreshes with an id_token too
        self.verify_fail: Exception | None = None  # verify_id_token raises this (e.g. an unknown kid)

    async def refresh(self, refresh_token: str, *, scope: str | None = None) -> TokenSet:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        n = self.calls
        return TokenSet(
            access_token=f"up-at-{n}",
            token_type="Bearer",
            expires_in=self.lifetime,
            expires_at=time.time() + self.lifetime,
            expires_in_source="response",
            refresh_token=f"up-rt-{n}" if self.rotate else None,
            id_token=f"up-idt-{n}" if self.id_tokens else None,
        )

    async def exchange_code(self, code: str, redirect_uri: str, code_verifier: str | None) -> TokenSet:
        raise NotImplementedError("not scripted")

    async def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict[str, Any]:
        if self.verify_fail is not None:
            raise self.verify_fail
        return {"sub": "u1", "exp": time.time() + 3600}
