"""Client ID Metadata Documents against a real https server on loopback (self-signed, trusted via the
``CIMD_SSL_CONTEXT`` test seam): validation, no redirects, size limit, timeout, cache of successes only,
private addresses refused unless allowed."""

from __future__ import annotations

import json

import pytest

from sidecar.oauth.cimd import CimdError, CimdFetcher
from tests.support.oauth_harness import CimdServer


async def test_valid_document(cimd_server: CimdServer) -> None:
    url = cimd_server.client_document("/c.json", client_name="Nice Client")
    fetcher = CimdFetcher(allow_private=True, ssl_context=cimd_server.ssl_context)
    try:
        client = await fetcher.get(url)
        assert client.client_id == url and client.kind == "metadata_document"
        assert client.token_endpoint_auth_method == "none"
        assert client.display_name() == "127.0.0.1" and client.client_name == "Nice Client"
        await fetcher.get(url)
        assert cimd_server.fetches["/c.json"] == 1  # cached
    finally:
        await fetcher.close()


async def test_private_addresses_refused_by_default(cimd_server: CimdServer) -> None:
    url = cimd_server.client_document("/c.json")
    fetcher = CimdFetcher(allow_private=False, ssl_context=cimd_server.ssl_context)
    try:
        with pytest.raises(CimdError, match="not allowed"):
            await fetcher.get(url)
        with pytest.raises(CimdError, match=r"not allowed|could not be fetched"):
            await fetcher.get(f"https://localhost:{cimd_server.port}/c.json")  # via the resolver
        assert cimd_server.fetches.get("/c.json", 0) == 0  # never connected
    finally:
        await fetcher.close()


@pytest.mark.parametrize(
    ("status", "body", "headers", "match"),
    [
        (302, b"", {"Location": "https://example.com/x.json"}, "HTTP 302"),
        (404, b"", {}, "HTTP 404"),
        (200, b"x" * 6000, {"Content-Type": "application/json"}, "larger than"),
        (200, b"not json", {}, "not JSON"),
    ],
)
async def test_bad_answers(cimd_server: CimdServer, status: int, body: bytes, headers: dict[str, str],
                           match: str) -> None:
    url = cimd_server.base + "/bad.json"
    cimd_server.raw["/bad.json"] = (status, body, headers)
    fetcher = CimdFetcher(allow_private=True, ssl_context=cimd_server.ssl_context)
    try:
        with pytest.raises(CimdError, match=match):
            await fetcher.get(url)
        with pytest.raises(CimdError, match=match):
            await fetcher.get(url)
        assert cimd_server.fetches["/bad.json"] == 1  # issue 12: a failure is remembered for a short time
    finally:
        await fetcher.close()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"client_id": "https://other.example/c.json"}, "another client_id"),
        ({"client_secret": "s"}, "client secret"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "'none'"),
        ({"redirect_uris": []}, "no redirect_uris"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid redirect URI"),
        ({"redirect_uris": ["https://ok.example/cb#frag"]}, "invalid redirect URI"),
        ({"grant_types": ["client_credentials"]}, "authorization_code"),
    ],
)
async def test_invalid_documents(cimd_server: CimdServer, change: dict[str, object], match: str) -> None:
    url = cimd_server.client_document("/c.json")
    cimd_server.documents["/c.json"].update(change)
    fetcher = CimdFetcher(allow_private=True, ssl_context=cimd_server.ssl_context)
    try:
        with pytest.raises(CimdError, match=match):
            await fetcher.get(url)
    finally:
        await fetcher.close()


async def test_timeout(cimd_server: CimdServer) -> None:
    url = cimd_server.client_document("/slow.json")
    cimd_server.delay = 0.5
    fetcher = CimdFetcher(allow_private=True, ssl_context=cimd_server.ssl_context, timeout=0.1)
    try:
        with pytest.raises(CimdError, match="timed out"):
            await fetcher.get(url)
    finally:
        await fetcher.close()


async def test_untrusted_certificate_is_refused(cimd_server: CimdServer) -> None:
    url = cimd_server.client_document("/c.json")
    fetcher = CimdFetcher(allow_private=True)  # system trust store only
    try:
        with pytest.raises(CimdError, match="could not be fetched"):
            await fetcher.get(url)
    finally:
        await fetcher.close()


def test_documents_are_json_objects() -> None:
    from sidecar.oauth.cimd import client_from_document

    with pytest.raises(CimdError):
        client_from_document("https://a.example/c.json", json.loads("[]"))
