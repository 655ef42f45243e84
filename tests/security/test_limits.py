"""Abuse limits of the front door (issue 12, item 5).

Every OAuth endpoint has a per-address budget (IPv6: per /64); failed client metadata fetches are remembered
for a while and at most a few run against one host at once; unused registrations expire after a day and
their number is capped (503 when full); a request body that dribbles in gets 408; IPv6 addresses that carry
a private IPv4 address are refused like that address.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.oauth.cimd import CIMD_MAX_FETCHES_PER_HOST, CimdFetcher, address_allowed
from sidecar.oauth.common import rate_key
from sidecar.oauth.registration import UNUSED_REGISTRATION_TTL_SECONDS
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import authorize_url, obtain_code, register, token
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, CimdServer, FakeClock, running_sidecar
from tests.support.oidc import IdPFront

ENDPOINTS = [
    ("POST", "/oauth/register"),
    ("GET", "/oauth/authorize"),
    ("POST", "/oauth/consent"),
    ("GET", "/oauth/callback"),
    ("POST", "/oauth/token"),
    ("POST", "/oauth/revoke"),
]


async def test_every_oauth_endpoint_is_rate_limited(
    idp_front: IdPFront, store: MemoryTokenStore, http: aiohttp.ClientSession
) -> None:
    async with running_sidecar(idp_front, store=store, rate_limit_per_minute=1) as sc:
        for method, path in ENDPOINTS:
            statuses = []
            for _ in range(2):
                async with http.request(method, sc.url + path, headers={"Accept": "application/json"}) as r:
                    statuses.append(r.status)
                    body = await r.json()
            assert statuses[1] == 429, (path, statuses)
            assert body["error"] == "too_many_requests" and r.headers["Retry-After"].isdigit()


async def test_ipv6_clients_share_a_budget_per_64(
    idp_front: IdPFront, store: MemoryTokenStore, http: aiohttp.ClientSession
) -> None:
    async def register_from(address: str) -> int:
        body = {"redirect_uris": [DEFAULT_REDIRECT_URI]}
        async with http.post(sc.url + "/oauth/register", json=body, headers={"X-Forwarded-For": address}) as r:
            return r.status

    async with running_sidecar(
        idp_front, store=store, rate_limit_per_minute=1, trusted_proxies=["127.0.0.0/8"]
    ) as sc:
        assert await register_from("2001:db8:1:2::1") == 201
        assert await register_from("2001:db8:1:2:ffff:ffff:ffff:ffff") == 429  # same /64: same attacker
        assert await register_from("2001:db8:1:3::1") == 201  # the next /64 is someone else


def test_rate_keys() -> None:
    assert rate_key("2001:db8::1") == rate_key("2001:db8::abcd:1") == "2001:db8::/64"
    assert rate_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert rate_key("198.51.100.7") == "198.51.100.7"
    assert rate_key("not an address") == "not an address"


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",  # NAT64 (RFC 6052) of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215) of 10.0.0.1
        "2002:7f00:1::1",  # 6to4 (RFC 3056) of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "::ffff:127.0.0.1",
        "::127.0.0.1",
    ],
)
def test_ipv6_wrapping_a_private_ipv4_address_is_refused(address: str) -> None:
    assert not address_allowed(address, allow_private=False)


def test_ipv6_wrapping_a_public_address_is_allowed() -> None:
    assert address_allowed("64:ff9b::808:808", allow_private=False)
    assert address_allowed("2002:808:808::1", allow_private=False)


# --- client metadata documents: failures remembered, per-host concurrency ----------------------------------------


async def test_failed_metadata_fetches_are_remembered(idp_front: IdPFront, store: MemoryTokenStore,
                                                       http: aiohttp.ClientSession, cimd_server: CimdServer) -> None:
    """/revoke with a made-up client id must not reflect one outbound fetch per request."""
    client_id = cimd_server.base + "/missing.json"
    async with running_sidecar(idp_front, store=store, cimd_ssl=cimd_server.ssl_context) as sc:
        for _ in range(5):
            async with http.post(sc.url + "/oauth/revoke", data={"client_id": client_id, "token": "x"}) as r:
                assert r.status == 401 and (await r.json())["error"] == "invalid_client"
    assert cimd_server.fetches["/missing.json"] == 1


class _CountingCimdServer(CimdServer):
    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.peak = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await super()._handle(request)
        finally:
            self.active -= 1


async def test_fetches_per_host_are_capped() -> None:
    server = _CountingCimdServer()
    await server.start()
    server.delay = 0.2
    ids = [server.client_document(f"/c{i}.json") for i in range(6)]
    fetcher = CimdFetcher(allow_private=True, ssl_context=server.ssl_context)
    try:
        clients = await asyncio.gather(*(fetcher.get(i) for i in ids))
    finally:
        await fetcher.close()
        await server.close()
    assert [c.client_id for c in clients] == ids
    assert server.peak == CIMD_MAX_FETCHES_PER_HOST


# --- registrations -------------------------------------------------------------------------------------------


async def test_unused_registration_expires_after_a_day_used_one_is_renewed(
    idp_front: IdPFront, store: MemoryTokenStore, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    async with running_sidecar(idp_front, store=store) as sc, Browser(idp_front, sc.url) as browser:
        unused = await register(http, sc)
        used = await register(http, sc)
        code = await obtain_code(browser, sc, used.client_id)
        status, body, _ = await token(http, sc, used, {"grant_type": "authorization_code", "code": code.code,
                                                       "code_verifier": code.verifier,
                                                       "redirect_uri": used.redirect_uri})
        assert status == 200, body
        clock.advance(UNUSED_REGISTRATION_TTL_SECONDS + 1)
        assert await store.get_client(unused.client_id) is None
        assert await store.get_client(used.client_id) is not None
        step = await browser.request("GET", authorize_url(sc, unused.client_id), headers={"Accept": "application/json"})
        assert step.status == 400 and json.loads(step.text)["error"] == "invalid_client"


async def test_registrations_are_capped_with_a_clear_503(
    idp_front: IdPFront, store: MemoryTokenStore, clock: FakeClock, http: aiohttp.ClientSession
) -> None:
    async with running_sidecar(idp_front, store=store, max_registered_clients=2) as sc:
        await register(http, sc)
        await register(http, sc)
        async with http.post(sc.url + "/oauth/register", json={"redirect_uris": [DEFAULT_REDIRECT_URI]}) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 503 and r.headers["Retry-After"].isdigit()
            assert body["error"] == "temporarily_unavailable" and "max_registered_clients" in body["error_description"]
        clock.advance(UNUSED_REGISTRATION_TTL_SECONDS + 1)  # the unused ones expire: room again
        await register(http, sc)


# --- slow bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/register", "/oauth/revoke", "/oauth/consent"])
async def test_a_dribbled_body_gets_408(idp_front: IdPFront, store: MemoryTokenStore, path: str) -> None:
    async with running_sidecar(idp_front, store=store, request_body_timeout_seconds=0.3) as sc:
        host, port = sc.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        content_type = "application/json" if path.endswith("register") else "application/x-www-form-urlencoded"
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 1000\r\n\r\ngrant_type=".encode()
        )
        await writer.drain()
        try:
            status_line = await asyncio.wait_for(reader.readline(), timeout=5)
            rest = await asyncio.wait_for(reader.read(4096), timeout=5)
        finally:
            writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert b'"error": "invalid_request"' in rest
