"""No input gives a 5xx (issue 12, item 9): generated requests to every OAuth endpoint (forms, JSON, query
strings, headers and cookies: missing, repeated, huge, non-UTF-8) get a 4xx with an OAuth error body (JSON,
or the error page for a browser) or a success, never a server error.

Requests are written as raw bytes on a socket, so nothing between the generator and the sidecar cleans them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.flow import register
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Sidecar, running_sidecar
from tests.support.oidc import IdPFront

EXAMPLES = 60  # per endpoint: bounded so the suite stays fast (7 endpoints)

PARAMS = ["client_id", "redirect_uri", "response_type", "code_challenge", "code_challenge_method", "scope", "state",
          "resource", "prompt", "grant_type", "code", "code_verifier", "refresh_token", "token", "token_type_hint",
          "client_secret", "consent_id", "csrf_token", "decision", "error", "error_description"]
VALUES = [b"", b"code", b"S256", b"authorization_code", b"refresh_token", b"approve", b"deny", b"openid",
          b"https://127.0.0.1:1/client.json", b"mcpc_x", DEFAULT_REDIRECT_URI.encode(), b"\xff\xfe", b"%",
          b"mcprt_" + b"0" * 32 + b".AAAAAAAAAAAAAAAAAAAAAAAA", b"mcpat_" + b"a" * 32 + b".x", b"\x00", b"a" * 5000,
          "cl\u0430ude".encode(), b"http://evil.example\\@127.0.0.1:9/callback",
          b"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
          b"@CLIENT@", b"@CLIENT@", b"@CONFIDENTIAL@"]  # registered clients' ids, filled in when sent
VALID_AUTHORIZE = {b"response_type": b"code", b"client_id": b"@CLIENT@",
                   b"redirect_uri": DEFAULT_REDIRECT_URI.encode(),
                   b"code_challenge": b"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", b"code_challenge_method": b"S256",
                   b"state": b"s", b"scope": b"openid"}

names = st.one_of(st.sampled_from(PARAMS), st.text(max_size=10)).map(lambda s: s.encode("utf-8", "surrogatepass"))
values = st.one_of(st.sampled_from(VALUES), st.binary(max_size=40))
pairs = st.lists(st.tuples(names, values), max_size=8)


NEAR_VALID: dict[str, list[dict[bytes, bytes]]] = {
    "/oauth/authorize": [VALID_AUTHORIZE],
    "/oauth/token": [
        {b"grant_type": b"refresh_token", b"client_id": b"@CLIENT@", b"scope": b"openid",
         b"refresh_token": b"mcprt_" + b"0" * 32 + b".AAAAAAAAAAAAAAAAAAAAAAAA"},
        {b"grant_type": b"authorization_code", b"client_id": b"@CLIENT@", b"code": b"c", b"code_verifier": b"v" * 43,
         b"redirect_uri": DEFAULT_REDIRECT_URI.encode()},
    ],
    "/oauth/revoke": [{b"token": b"mcpat_" + b"a" * 32 + b".AAAAAAAAAAAAAAAAAAAAAAAA", b"client_id": b"@CLIENT@"}],
    "/oauth/consent": [{b"consent_id": b"x", b"csrf_token": b"y", b"decision": b"approve"}],
    "/oauth/callback": [{b"state": b"s", b"code": b"c"}, {b"state": b"s", b"error": b"access_denied"}],
}


@st.composite
def near_valid(draw: Any, path: str) -> list[tuple[bytes, bytes]]:
    """A valid-looking request for ``path`` with a few parameters replaced, dropped or added."""
    base = draw(st.sampled_from(NEAR_VALID[path]))
    items = dict(base)
    for key in draw(st.lists(st.sampled_from(list(base)), max_size=3)):
        if draw(st.booleans()):
            items[key] = draw(values)
        else:
            items.pop(key, None)
    return list(items.items()) + draw(st.lists(st.tuples(names, values), max_size=2))


def urlencoded(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"&".join(quote_from_bytes(k).encode() + b"=" + quote_from_bytes(v).encode() for k, v in items)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
registration = st.fixed_dictionaries({}, optional={
    "redirect_uris": st.one_of(st.lists(st.sampled_from([v.decode("latin-1") for v in VALUES]), max_size=3),
                               json_values),
    "client_name": st.one_of(st.text(max_size=30), json_values),
    "token_endpoint_auth_method": st.sampled_from(["none", "client_secret_basic", "client_secret_post", "x"]),
    "grant_types": st.one_of(st.just(["authorization_code"]), json_values),
    "application_type": st.sampled_from(["web", "native", "x"]),
    "response_types": json_values,
    "scope": json_values,
}).map(lambda d: json.dumps(d).encode())

# Header values: any byte HTTP allows there (RFC 9110 §5.5: visible ASCII, space, tab and obs-text 0x80-0xFF);
# control characters are refused by aiohttp's HTTP parser before any handler runs.
header_value = st.one_of(
    st.sampled_from([b"", b"null", b"http://127.0.0.1", b"\xff\xfe", b"a" * 6000]),
    st.lists(st.integers(0x20, 0xFF).filter(lambda b: b != 0x7F), max_size=40).map(bytes),
)
authorization = st.one_of(
    st.none(),
    st.just(b"Basic " + base64.b64encode(b"mcpc_x:secret")),
    st.binary(max_size=30).map(lambda b: b"Basic " + base64.b64encode(b)),
    st.sampled_from([b"Basic", b"Basic !!!", b"Bearer x", b"basic " + base64.b64encode(b"%zz:%ff")]),
)
cookies = st.lists(st.tuples(st.sampled_from([b"__Host-mcpsc-consent-0123456789abcdef0123", b"a", b""]),
                             header_value), max_size=3)
content_types = st.sampled_from([None, b"application/x-www-form-urlencoded", b"application/json", b"text/plain",
                                 b"application/x-www-form-urlencoded; charset=latin-1", b"multipart/form-data"])
accepts = st.sampled_from([None, b"text/html", b"application/json", b"*/*"])


@st.composite
def requests(draw: Any, method: str, path: str) -> bytes:
    query = draw(st.one_of(pairs, near_valid(path)) if method == "GET" and path in NEAR_VALID else pairs)
    target = path.encode() + (b"?" + urlencoded(query) if query else b"")
    if draw(st.booleans()) and query:  # repeated parameters
        target += b"&" + urlencoded(query[:1])
    headers = [b"Host: HOST"]
    form_endpoint = method == "POST" and path in NEAR_VALID
    content_type = draw(st.one_of(st.just(b"application/x-www-form-urlencoded"), content_types)
                        if form_endpoint else content_types)
    for name, value in ((b"Authorization", draw(authorization)), (b"Content-Type", content_type),
                        (b"Accept", draw(accepts))):
        if value is not None:
            headers.append(name + b": " + value)
    for _ in range(draw(st.integers(0, 2))):
        headers.append(b"Origin: " + draw(header_value))
    jar = draw(cookies)
    if jar:
        headers.append(b"Cookie: " + b"; ".join(k + b"=" + v for k, v in jar))
    body = b""
    if method == "POST":
        if form_endpoint:
            body = draw(st.one_of(near_valid(path), near_valid(path), pairs).map(urlencoded) | st.binary(max_size=200))
        else:
            body = draw(st.one_of(registration, pairs.map(urlencoded), st.binary(max_size=200)))
        headers.append(b"Content-Length: " + str(len(body)).encode())
    head = method.encode() + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers)
    return head + b"\r\nConnection: close\r\n\r\n" + body


Target = tuple[Sidecar, dict[bytes, bytes]]  # the sidecar, and the registered client ids by placeholder
# aiohttp's HTTP parser answers a request line or header longer than this with its own plain 400, before any
# handler runs (a 4xx, though not an OAuth body): the only answer of that kind the check accepts.
MAX_LINE_BYTES = 8190


@pytest_asyncio.fixture
async def fuzz_sidecar(idp_front: IdPFront, store: MemoryTokenStore) -> AsyncIterator[Target]:
    async with running_sidecar(idp_front, store=store, rate_limit_per_minute=0, request_body_timeout_seconds=2) as sc:
        async with aiohttp.ClientSession() as http:
            public = await register(http, sc, token_endpoint_auth_method="none")
            confidential = await register(http, sc)
        yield sc, {b"@CLIENT@": public.client_id.encode(), b"@CONFIDENTIAL@": confidential.client_id.encode()}


async def send(target: Target, raw: bytes) -> tuple[int, bytes, bytes]:
    sc, ids = target
    host, port = sc.url.removeprefix("http://").split(":")
    for placeholder, client_id in ids.items():
        raw = raw.replace(placeholder, client_id).replace(quote_from_bytes(placeholder).encode(), client_id)
    body_start = raw.find(b"\r\n\r\n") + 4
    if b"Content-Length: " in raw[:body_start]:  # the ids changed the body's length
        head, body = raw[:body_start], raw[body_start:]
        head = re.sub(rb"Content-Length: \d+", b"Content-Length: " + str(len(body)).encode(), head)
        raw = head + body
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(raw.replace(b"Host: HOST", f"Host: {host}:{port}".encode(), 1))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head, body


def check(status: int, head: bytes, body: bytes, sent: bytes) -> None:
    assert status < 500, (status, body[:300])
    if status < 400:
        return
    if status == 400 and any(len(line) > MAX_LINE_BYTES for line in sent.split(b"\r\n\r\n", 1)[0].split(b"\r\n")):
        return
    if b"application/json" in head:
        assert isinstance(json.loads(body).get("error"), str), body[:300]
    else:
        assert b"text/html" in head and b"Error code: <code>" in body, (head, body[:300])


ENDPOINTS = [
    ("GET", "/oauth/authorize"),
    ("POST", "/oauth/consent"),
    ("GET", "/oauth/callback"),
    ("POST", "/oauth/token"),
    ("POST", "/oauth/register"),
    ("POST", "/oauth/revoke"),
    ("GET", "/.well-known/oauth-authorization-server"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_no_input_gives_a_server_error(fuzz_sidecar: Target, method: str, path: str) -> None:
    failures: list[tuple[int, bytes]] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests(method, path))
    def run(raw: bytes) -> None:
        status, head, body = asyncio.run_coroutine_threadsafe(send(fuzz_sidecar, raw), loop).result(timeout=30)
        try:
            check(status, head, body, raw)
        except AssertionError:
            failures.append((status, raw[:400]))
            raise

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run)
    assert not failures
