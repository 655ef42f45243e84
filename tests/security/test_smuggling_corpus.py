"""A named request-smuggling corpus through the full sidecar (issue 11).

Each case is answered 400 by the sidecar, or relayed as exactly one request carrying the identity the sidecar
checked (``X-Forwarded-User`` injected from the verified token's ``sub``): never a second, unauthenticated
request at the backend, never a request h11 (the backend's parser here) finds ill-framed.
"""

from __future__ import annotations

import re

import pytest

from tests.security.conftest import SidecarFor, raw_exchange
from tests.support.h11_backend import H11Backend
from tests.support.jwt_tokens import valid

TOKEN = valid(sub="alice").encode()
AUTH = b"Authorization: Bearer " + TOKEN + b"\r\n"
SMUGGLED = b"GET /mcp/admin-only HTTP/1.1\r\nHost: x\r\nX-Forwarded-User: admin\r\n\r\n"


CHUNKED_ABCD = b"4\r\nabcd\r\n0\r\n\r\n"


def post(headers: bytes, body: bytes) -> bytes:
    return b"POST /mcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH + headers + b"\r\n" + body


CORPUS: dict[str, bytes] = {
    "CL.TE": post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
    "TE.CL": post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
    "TE.TE xchunked": post(b"Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n", b"abcd"),
    "TE.TE space before colon": post(b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n", b"abcd"),
    "TE.TE duplicate": post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", CHUNKED_ABCD),
    "TE.TE tab": post(b"Transfer-Encoding:\tchunked\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
    "TE.TE chunked, identity": post(b"Transfer-Encoding: chunked, identity\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
    "TE.TE identity, chunked": post(b"Transfer-Encoding: identity, chunked\r\n", b"4\r\nabcd\r\n0\r\n\r\n"),
    "TE.TE obs-fold": post(b"X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"abcd"),
    "TE.TE underscore": post(b"Transfer_Encoding: chunked\r\nContent-Length: 4\r\n", b"abcd"),
    "TE in a lookalike header": post(b"X-Note: transfer-encoding: chunked\r\nContent-Length: 4\r\n", b"abcd"),
    "duplicate Content-Length": post(b"Content-Length: 4\r\nContent-Length: 5\r\n", b"abcde"),
    "Content-Length list": post(b"Content-Length: 4, 4\r\n", b"abcd"),
    "signed Content-Length": post(b"Content-Length: +4\r\n", b"abcd"),
    "negative Content-Length": post(b"Content-Length: -1\r\n", b"abcd"),
    "hex Content-Length": post(b"Content-Length: 0x4\r\n", b"abcd"),
    "space before colon": post(b"Content-Length : 4\r\n", b"abcd"),
    "obs-fold": post(b"X-A: a\r\n b\r\nContent-Length: 4\r\n", b"abcd"),
    "bare LF": b"POST /mcp HTTP/1.1\nHost: x\n" + AUTH.replace(b"\r\n", b"\n") + b"Content-Length: 4\n\nabcd",
    "bare CR": post(b"X-A: a\rContent-Length: 4\r\n", b"abcd"),
    "NUL in a value": post(b"X-A: a\x00b\r\nContent-Length: 4\r\n", b"abcd"),
    "NUL in the target": b"GET /mcp\x00/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + AUTH + b"\r\n",
    "Expect: 100-continue": post(b"Expect: 100-continue\r\nContent-Length: 4\r\n", b"abcd"),
    "absolute-form target": b"GET http://evil.example/mcp?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    + AUTH
    + b"\r\n",
    "pipelined request in the body": post(b"Content-Length: 0\r\n", SMUGGLED),
    "chunk size overflow": post(b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nabcd\r\n0\r\n\r\n"),
    "chunk extension smuggle": post(b"Transfer-Encoding: chunked\r\n", b"4;a=\"\r\n0\r\n\r\n\"\r\nabcd\r\n0\r\n\r\n"),
    "big body with a TE lookalike": post(b"X-Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % (300 * 1024),
                                         b"a" * (300 * 1024 - len(SMUGGLED)) + SMUGGLED),
}


@pytest.mark.parametrize("name", list(CORPUS))
async def test_smuggling_case_is_refused_or_relayed_as_one_checked_request(
    name: str, backend: H11Backend, sidecar_for: SidecarFor
) -> None:
    client = await sidecar_for(backend, inject_headers={"X-Forwarded-User": "{claims.sub}"})
    answer = await raw_exchange(client.server.port, CORPUS[name], timeout=1.0)
    statuses = [int(s) for s in re.findall(rb"(?:^|\n)HTTP/1\.[01] ([2-5]\d\d) ", answer)]  # final answers
    assert statuses, f"{name}: no answer at all"
    assert backend.errors == [], name
    # Every request the backend ran carries the checked identity, and each one was answered to the client.
    for got in backend.requests:
        assert got.getall("X-Forwarded-User") == [b"alice"], name
        assert got.getall("Authorization") == [b"Bearer " + TOKEN], name
        assert not got.target.startswith(b"/mcp/admin"), name
    assert len(backend.requests) <= 1, name
    assert len(backend.requests) == sum(1 for s in statuses if s < 400), (name, statuses)
    for status in statuses:
        assert status < 500 or status == 502, (name, statuses)
