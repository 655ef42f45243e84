"""Fetched documents are read to EOF under a size cap and a deadline (issue 12, item 4).

A raw TCP server sends each document the ways real servers and CDNs do: in many small TCP writes, with
chunked transfer coding, or too much. Every reader (gate mode's JWKS, client ID metadata documents, the
IdP's discovery document and token responses) goes through one helper, :func:`sidecar.bounded.read_bounded`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Literal

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.bounded import BodyTooLarge, read_bounded
from sidecar.idp import IdPClient, IdPUnavailable
from sidecar.jwks import JwksVerifier
from sidecar.oauth.cimd import CIMD_MAX_BYTES, CimdError, CimdFetcher
from tests.support.jwt_tokens import RsaIssuer
from tests.support.oauth_harness import CimdServer

Mode = Literal["small-writes", "chunked", "too-much", "too-much-declared", "dribble"]
PIECE = 7  # bytes per TCP write


@asynccontextmanager
async def raw_server(
    body: bytes, mode: Mode, *, tls: ssl.SSLContext | None = None, content_type: str = "application/json"
) -> AsyncIterator[str]:
    """An HTTP/1.1 server answering every request with ``body`` sent the ``mode`` way; yields its base URL."""

    async def write_slowly(writer: asyncio.StreamWriter, data: bytes, pause: float = 0.001) -> None:
        for i in range(0, len(data), PIECE):
            writer.write(data[i:i + PIECE])
            await writer.drain()
            await asyncio.sleep(pause)  # separate TCP segments: the reader sees many small reads

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
            if mode == "small-writes":
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
                await write_slowly(writer, body)
            elif mode == "chunked":
                writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
                for i in range(0, len(body), 5):
                    piece = body[i:i + 5]
                    await write_slowly(writer, f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                writer.write(b"0\r\n\r\n")
            elif mode == "too-much":
                writer.write(f"{head}\r\n".encode())  # no length: the body ends when the server closes
                for _ in range(10_000):
                    writer.write(b" " * 1024)
                    await writer.drain()
            elif mode == "too-much-declared":
                writer.write(f"{head}Content-Length: {10**9}\r\n\r\n".encode() + body)
            elif mode == "dribble":
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
                await write_slowly(writer, body, pause=0.5)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()


# --- the helper ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["small-writes", "chunked"])
async def test_helper_reads_to_eof(mode: Mode) -> None:
    body = json.dumps({"keys": [{"n": "x" * 300}]}).encode()
    async with raw_server(body, mode) as url, aiohttp.ClientSession() as s, s.get(url) as r:
        assert await read_bounded(r.content, limit=len(body), timeout=5, declared=r.content_length) == body


@pytest.mark.parametrize("mode", ["too-much", "too-much-declared"])
async def test_helper_stops_at_the_cap(mode: Mode) -> None:
    async with raw_server(b"{}", mode) as url, aiohttp.ClientSession() as s, s.get(url) as r:
        with pytest.raises(BodyTooLarge):
            await read_bounded(r.content, limit=64 * 1024, timeout=5, declared=r.content_length)


async def test_helper_has_a_deadline() -> None:
    async with raw_server(b"{" + b" " * 200 + b"}", "dribble") as url, aiohttp.ClientSession() as s, s.get(url) as r:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await read_bounded(r.content, limit=1024, timeout=0.3, declared=r.content_length)
        assert time.monotonic() - started < 3


# --- JWKS (gate mode) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["small-writes", "chunked"])
async def test_jwks_split_by_the_network_still_verifies(mode: Mode) -> None:
    issuer = RsaIssuer(kid="k1")
    body = json.dumps(issuer.jwks()).encode()
    token = issuer.sign(issuer.claims())
    async with raw_server(body, mode) as url, aiohttp.ClientSession() as session:
        verifier = JwksVerifier(session, url + "/jwks", issuer=issuer.issuer, audience=[])
        claims = await verifier.verify(token, {"alg": "RS256", "kid": "k1"})
        assert claims["iss"] == issuer.issuer


async def test_jwks_that_is_too_large_is_refused() -> None:
    async with raw_server(b"{}", "too-much") as url, aiohttp.ClientSession() as session:
        verifier = JwksVerifier(session, url + "/jwks", issuer=None, audience=[])
        await verifier._fetch()
        assert not verifier.ready


# --- client ID metadata documents --------------------------------------------------------------------------------


@pytest.fixture
def tls() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    certs = CimdServer()  # only for its self-signed certificate (never started)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(certs.cert), str(certs.key))
    client = certs.ssl_context
    certs._dir.cleanup()
    yield server, client


def _document(base: str) -> bytes:
    return json.dumps({
        "client_id": base + "/client.json", "client_name": "Split", "redirect_uris": ["http://127.0.0.1:9/cb"],
        "token_endpoint_auth_method": "none",
    }).encode()


@pytest.mark.parametrize("mode", ["small-writes", "chunked"])
async def test_cimd_split_by_the_network_is_read_whole(mode: Mode, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    body_box: list[bytes] = []

    @asynccontextmanager
    async def serving() -> AsyncIterator[str]:
        server_box: dict[str, str] = {}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = _document(server_box["url"])
            body_box.append(body)
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            if mode == "chunked":
                writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
                for i in range(0, len(body), 5):
                    writer.write(f"{len(body[i:i + 5]):x}\r\n".encode() + body[i:i + 5] + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.001)
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
                for i in range(0, len(body), PIECE):
                    writer.write(body[i:i + PIECE])
                    await writer.drain()
                    await asyncio.sleep(0.001)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        server_box["url"] = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield server_box["url"]
        finally:
            server.close()

    async with serving() as base:
        fetcher = CimdFetcher(allow_private=True, ssl_context=client_ctx)
        try:
            client = await fetcher.get(base + "/client.json")
        finally:
            await fetcher.close()
    assert client.client_name == "Split" and client.redirect_uris == ("http://127.0.0.1:9/cb",)
    assert len(body_box) == 1  # one fetch, read whole


async def test_cimd_that_is_too_large_is_refused(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    async with raw_server(b"{}", "too-much", tls=server_ctx) as base:
        fetcher = CimdFetcher(allow_private=True, ssl_context=client_ctx)
        try:
            with pytest.raises(CimdError, match=str(CIMD_MAX_BYTES)):
                await fetcher.get(base + "/client.json")
        finally:
            await fetcher.close()


# --- the IdP: discovery and token responses ----------------------------------------------------------------------


@asynccontextmanager
async def idp_for(mode: Mode, document: dict[str, object] | None = None) -> AsyncIterator[IdPClient]:
    box: dict[str, bytes] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_head = await reader.readuntil(b"\r\n\r\n")
        body = box["token"] if b" /token " in request_head.split(b"\r\n", 1)[0] else box["body"]
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        if mode == "too-much":
            writer.write(f"{head}\r\n".encode())
            try:
                for _ in range(2000):
                    writer.write(b" " * 1024)
                    await writer.drain()
            except ConnectionError:
                pass
        else:
            writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
            for i in range(0, len(body), 5):
                writer.write(f"{len(body[i:i + 5]):x}\r\n".encode() + body[i:i + 5] + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.001)
            writer.write(b"0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    box["body"] = json.dumps(document or {
        "issuer": base, "token_endpoint": base + "/token", "jwks_uri": base + "/jwks",
        "authorization_endpoint": base + "/authorize",
    }).encode()
    box["token"] = json.dumps({"access_token": "at-" + "x" * 200, "token_type": "Bearer", "expires_in": 300,
                               "refresh_token": "rt-2"}).encode()
    try:
        async with aiohttp.ClientSession() as session:
            yield IdPClient(session, issuer=base, client_id="c", client_secret="s", timeout=5)
    finally:
        server.close()


async def test_idp_discovery_split_into_chunks_is_read_whole() -> None:
    async with idp_for("chunked") as idp:
        metadata = await idp.discover()
        assert metadata.token_endpoint.endswith("/token")


async def test_idp_token_response_split_into_chunks_is_read_whole() -> None:
    async with idp_for("chunked") as idp:
        tokens = await idp.refresh("rt-1")
        assert tokens.access_token == "at-" + "x" * 200 and tokens.refresh_token == "rt-2"


async def test_idp_answer_that_is_too_large_is_refused() -> None:
    async with idp_for("too-much") as idp:
        with pytest.raises(IdPUnavailable, match="too large"):
            await idp.discover()


# --- generated splits -------------------------------------------------------------------------------------------


class _Protocol:
    """The little of a protocol a StreamReader touches when it is fed directly."""

    _reading_paused = False

    def pause_reading(self) -> None: ...

    def resume_reading(self, resume_parser: bool = True) -> None: ...


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=40), limit=st.integers(0, 4000))
def test_any_split_reads_the_same_body_or_refuses_it(body: bytes, cuts: list[int], limit: int) -> None:
    async def read() -> bytes:
        stream = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
        for start, end in itertools.pairwise(edges):
            stream.feed_data(body[start:end])
        stream.feed_eof()
        return await read_bounded(stream, limit=limit, timeout=5)

    if len(body) > limit:
        with pytest.raises(BodyTooLarge):
            asyncio.run(read())
    else:
        assert asyncio.run(read()) == body
