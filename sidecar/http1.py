"""HTTP/1.1 request framing for the relay's backend client (RFC 9112 §6, §7; RFC 9110 §5, §8.6).

The framing of a request body is a typed value (:class:`Length` or :data:`CHUNKED`) decided once by
:func:`framing_of` from what the caller knows (a ``bytes`` body, a declared length, or neither), never by
inspecting serialized bytes: the head serializer writes exactly that framing, and :func:`upload` sends exactly
the declared number of bytes or raises. Header text is encoded back to the bytes it was decoded from (aiohttp
decodes with UTF-8 and ``surrogateescape``), so header bytes pass through unchanged; injected values are str
and therefore go out as their UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Length:
    """The body is exactly ``n`` bytes, declared with ``Content-Length``."""

    n: int


@dataclass(frozen=True, slots=True)
class Chunked:
    """The body's length is unknown: ``Transfer-Encoding: chunked`` (RFC 9112 §7.1)."""


CHUNKED: Final = Chunked()
Framing = Length | Chunked | None  # None: a request without a body and without a framing header


Body = bytes | AsyncIterator[bytes] | None


class BackendError(Exception):
    """Base of the errors this module raises; :mod:`sidecar.proxy` maps them to 502/504."""


class BackendConnectError(BackendError):
    """The connection could not be made (refused, unreachable)."""


class BackendConnectTimeout(BackendError):
    """The connection was not accepted within the connect timeout."""


class BackendPoolExhausted(BackendError):
    """Every allowed connection stayed busy for the whole connect timeout."""


class BackendDisconnected(BackendError):
    """The backend closed the connection before the response was complete."""


class BackendProtocolError(BackendError):
    """The backend sent something that is not HTTP/1.1, or a header that cannot be relayed unchanged."""


class BackendBodyTooLarge(BackendProtocolError):
    """A response body the sidecar must read whole (to filter it) is larger than its cap."""


class BackendRequestMismatch(BackendError):
    """The request body did not have the length its framing declared; the connection was closed."""


class UnrepresentableHeader(ValueError):
    """A header cannot be sent as it is (not a token name, or CR/LF/NUL in the value): a client error."""


def framing_of(method: str, body: Body, content_length: int | None) -> Framing:
    """The framing of a request body, decided once from typed facts, never from serialized bytes."""
    if isinstance(body, bytes):
        return Length(len(body))
    if body is not None:
        return Length(content_length) if content_length is not None else CHUNKED
    if method in ("POST", "PUT", "PATCH"):
        return Length(0)  # RFC 9110 §8.6: a user agent SHOULD send Content-Length: 0 for an empty body
    return None


async def upload(
    write: Callable[[bytes], object], drain: Callable[[], Awaitable[None]], body: AsyncIterator[bytes], framing: Framing
) -> None:
    """Stream a body in its declared framing; a body longer or shorter than its declared length is refused."""
    if isinstance(framing, Length):
        left = framing.n
        async for part in body:
            if not part:
                continue
            if len(part) > left:
                raise BackendRequestMismatch(f"the request body is longer than its declared {framing.n} bytes")
            left -= len(part)
            write(part)
            await drain()
        if left:
            raise BackendRequestMismatch(f"the request body ended {left} bytes short of its declared length")
        return
    async for part in body:
        if part:
            write(b"%x\r\n%b\r\n" % (len(part), part))
            await drain()
    write(b"0\r\n\r\n")


def serialize_head(method: str, target: str, headers: Iterable[tuple[str, str]], framing: Framing) -> bytes:
    """The request head for this framing. Header text is encoded back to the bytes it was decoded from.

    RFC 9110 §5.5: "Field values containing CR, LF, or NUL characters are invalid and dangerous": a head in
    which any line holds a CR, LF or NUL of its own is refused here, whatever its origin (a few C-level scans,
    no parsing). Field names are tokens by construction: the client's passed aiohttp's strict parser, the
    injected ones were validated by ``check-config``, the rest are the sidecar's own."""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if isinstance(framing, Length):
        lines.append(f"Content-Length: {framing.n}")
    elif framing is not None:
        lines.append("Transfer-Encoding: chunked")
    lines.append("\r\n")
    text = "\r\n".join(lines)
    breaks = len(lines)  # the separators, plus the final empty line's
    if text.count("\n") != breaks or text.count("\r") != breaks or "\x00" in text or " " in target:
        raise UnrepresentableHeader("a header value or the target contains CR, LF, NUL or a space")
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnrepresentableHeader("a header contains text that has no byte form") from None
