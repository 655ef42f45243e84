"""Bounded streaming reads: every document the sidecar fetches (JWKS, client ID metadata documents, IdP
discovery and key sets, token responses) and every OAuth request body is read with :func:`read_bounded`.

A body is read to EOF, however the peer splits it (many small TCP writes, chunked transfer coding, a
``Content-Length`` or none), under a size cap and a deadline. ``StreamReader.read(n)`` alone is not enough:
it returns only what is buffered at that moment, so a document delivered in two TCP writes arrives cut.

* More than ``limit`` bytes (declared in ``Content-Length`` or actually sent): :class:`BodyTooLarge`, raised
  as soon as the cap is crossed, without buffering the rest.
* Not complete within ``timeout`` seconds: :class:`TimeoutError` (a slowly dribbled body cannot hold a
  connection for minutes).
* A peer that closes early surfaces as the stream's own error (``aiohttp.ClientPayloadError`` on a client
  response, a short body on a server request, which then fails to parse).
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import StreamReader

# Read granularity: large enough for a document in one or two reads, small enough to stop early.
READ_CHUNK_BYTES: Final = 16 * 1024


class BodyTooLarge(Exception):
    """The body is larger than the caller's limit (``limit`` says how large that is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than {limit} bytes")
        self.limit = limit


async def read_bounded(
    stream: StreamReader, *, limit: int, timeout: float, declared: int | None = None  # noqa: ASYNC109
) -> bytes:
    """The whole body of ``stream`` (to EOF), at most ``limit`` bytes, within ``timeout`` seconds.

    ``declared`` is the ``Content-Length`` if any: a larger one is refused before reading.
    Raises :class:`BodyTooLarge` or :class:`TimeoutError`.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        while True:
            chunk = await stream.read(READ_CHUNK_BYTES)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
