"""Red team: a client ID metadata document (fetched from a URL the attacker chooses) that nests deeper than
Python's JSON parser goes. Within the 5 KB cap, ``[`` x 2500 raised RecursionError, which the fetcher did not
catch: a 500 at ``/oauth/authorize`` for a document anyone can host. It is refused like any document that is
not JSON. The same for a registration request (16 KB cap): a 500 at ``/oauth/register`` for anyone."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.oauth.cimd import CIMD_MAX_BYTES, CimdError, CimdFetcher
from tests.security.test_documents import raw_server, tls  # noqa: F401
from tests.support.oauth_harness import Sidecar


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(CIMD_MAX_BYTES // 2 - 100, (CIMD_MAX_BYTES - 1) // 2), opener=st.sampled_from(["[", "[[{}],"]))
async def test_a_deeply_nested_document_is_refused_not_a_crash(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], depth: int, opener: str  # noqa: F811
) -> None:
    body = (opener + "[" * (depth - len(opener)) + "1" + "]" * (depth - len(opener) + opener.count("["))).encode()
    assert len(body) <= CIMD_MAX_BYTES
    server_ctx, client_ctx = tls
    async with raw_server(body, "small-writes", tls=server_ctx) as base:
        fetcher = CimdFetcher(allow_private=True, ssl_context=client_ctx)
        try:
            with pytest.raises(CimdError, match="not JSON"):
                await fetcher.get(base + "/client.json")
        finally:
            await fetcher.close()


@pytest.mark.parametrize("opener", ["[", '{"a":'])
async def test_a_deeply_nested_registration_is_400_not_500(
    http: aiohttp.ClientSession, sidecar: Sidecar, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    depth = 5000 if opener == "[" else 2000  # under the 16 KB registration cap
    body = opener * depth + "1" + closer * depth
    async with http.post(sidecar.url + "/oauth/register", data=body,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_client_metadata"
