"""The gate's token cache is bounded by what an anonymous client can make it hold."""

from __future__ import annotations

import contextlib

from sidecar.challenge import InvalidToken


async def test_gate_token_cache_keeps_only_small_well_formed_jwts() -> None:
    import base64
    import json

    from sidecar.auth import CACHEABLE_TOKEN_BYTES, GateAuthenticator

    def jwt(claims: dict[str, object]) -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")  # noqa: E731
        return f"{enc({'alg': 'none'})}.{enc(claims)}."

    gate = GateAuthenticator(leeway=60, opaque_tokens="pass", required_scopes=[])
    small, big = jwt({"sub": "u"}), jwt({"sub": "u", "pad": "x" * CACHEABLE_TOKEN_BYTES})
    malformed = small.split(".")[0] + ".bm90anNvbg.sig"  # JWT-shaped, payload "notjson"
    for token in (small, big, malformed):
        with contextlib.suppress(InvalidToken):  # malformed is rejected; the point is what stays cached
            await gate.authenticate(f"Bearer {token}", 0.0)
    assert set(gate._cache) == {small}
