"""``hide_denied_tools``: remove the tools a caller may not call from ``tools/list`` results (issue 15).

Only the JSON-RPC responses whose id answers one of the request's ``tools/list`` calls are touched; every
other message, and every response from which nothing was removed, reaches the client byte for byte.

* ``application/json``: a single response, or a batch (MCP 2025-03-26) whose other elements keep their bytes.
* ``text/event-stream`` (WHATWG HTML §9.2 "Server-sent events"): parsed event by event as chunks arrive
  (lines end in CRLF, LF or CR; an empty line ends an event); only the current event is held back, never the
  stream, and once every ``tools/list`` id is answered the rest of the stream passes through untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from sidecar.mcp_message import same_id

# One SSE event is held in memory at most this long; a longer one ends the stream (it cannot be checked).
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
# A JSON tools/list answer is read whole to be filtered; beyond this it is refused (502), never held in memory.
MAX_FILTERED_BODY_BYTES: Final = MAX_EVENT_BYTES
_LINE_END: Final = re.compile(rb"\r\n|\n|\r")
_WS: Final = b" \t\r\n"

Visible = Callable[[str], bool]
# In place of the request ids: every response counts as a tools/list answer. For a resumed stream (a GET with
# Last-Event-ID replays the answers of an earlier POST, whose tools/list ids this request does not carry).
ANY_ID: Final = object()


class FilterError(Exception):
    """The response cannot be filtered safely (an SSE event larger than :data:`MAX_EVENT_BYTES`, JSON nested
    deeper than the parser goes)."""


def filter_message(message: Any, ids: Sequence[Any], visible: Visible) -> tuple[bool, Any]:
    """``(answered, replacement or None)``: whether this message answers a ``tools/list`` id, and the filtered
    message when something was removed."""
    if (
        not isinstance(message, dict)
        or "id" not in message
        or not any(i is ANY_ID or same_id(message["id"], i) for i in ids)
    ):
        return False, None
    result = message.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return True, None
    tools = result["tools"]
    kept = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str) and visible(t["name"])]
    if len(kept) == len(tools):
        return True, None
    return True, {**message, "result": {**result, "tools": kept}}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _array_spans(text: str) -> list[tuple[int, int]] | None:
    """The (start, end) offsets of each element of a top-level JSON array, or None if it is not one."""
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text.startswith("[", i):
        return None
    i += 1
    spans: list[tuple[int, int]] = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == "]" and not spans:
            return spans
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        spans.append((i, end))
        i = end
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            return spans
        return None


def filter_json(body: bytes, ids: Sequence[Any], visible: Visible) -> bytes:
    """A JSON response body with denied tools removed from ``tools/list`` results."""
    try:
        text = body.decode("utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return body  # not JSON: nothing a client could read tools from
    except RecursionError:
        # JSON nested deeper than this parser goes: a client's parser may read it, so it is not passed on unread.
        raise FilterError("the tools/list answer nests too deeply to check") from None
    if isinstance(data, dict):
        _, replacement = filter_message(data, ids, visible)
        return body if replacement is None else _dumps(replacement)
    spans = _array_spans(text) if isinstance(data, list) else None
    if spans is None or len(spans) != len(data):
        return body
    out: list[str] = []
    last = 0
    changed = False
    for (start, end), element in zip(spans, data, strict=True):
        _, replacement = filter_message(element, ids, visible)
        if replacement is not None:
            out.append(text[last:start])
            out.append(_dumps(replacement).decode("utf-8"))
            last = end
            changed = True
    if not changed:
        return body
    out.append(text[last:])
    return "".join(out).encode("utf-8")


class SseFilter:
    """Incremental ``text/event-stream`` filter: :meth:`feed` each chunk, :meth:`finish` at the end."""

    def __init__(self, ids: Sequence[Any], visible: Visible) -> None:
        self._pending = list(ids)
        self._visible = visible
        self._buf = bytearray()
        self._scan = 0  # where the next line starts within _buf

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending and not self._buf:
            return chunk  # every tools/list answered: the rest passes through untouched
        self._buf += chunk
        return self._drain(final=False)

    def finish(self) -> bytes:
        out = self._drain(final=True)
        rest = self._take(len(self._buf))
        if rest and self._pending and self._event(rest + b"\n\n") != rest + b"\n\n":
            # WHATWG: an event cut off by the end of the stream is never dispatched; a lenient client might,
            # so an unfinished tools/list answer with something to hide is dropped rather than passed on.
            rest = b""
        return out + rest

    def _take(self, end: int) -> bytes:
        out = bytes(self._buf[:end])
        del self._buf[:end]
        self._scan = 0
        return out

    def _drain(self, *, final: bool) -> bytes:
        out = bytearray()
        while True:
            if not self._pending:
                out += self._take(len(self._buf))
                return bytes(out)
            match = _LINE_END.search(self._buf, self._scan)
            if match is None:
                break
            if match.group() == b"\r" and match.end() == len(self._buf) and not final:
                break  # a CR at the end of a chunk may be the first half of CRLF
            empty_line = match.start() == self._scan
            self._scan = match.end()
            if empty_line:
                out += self._event(self._take(match.end()))
        if len(self._buf) > MAX_EVENT_BYTES:
            raise FilterError("an event in the tools/list stream is too large to check")
        return bytes(out)

    def _event(self, raw: bytes) -> bytes:
        lines = _LINE_END.split(raw)
        data: list[bytes] = []
        for line in lines:
            if line.startswith(b"data"):
                field, _sep, value = line.partition(b":")
                if field == b"data":
                    data.append(value[1:] if value.startswith(b" ") else value)
        if not data:
            return raw
        try:
            message = json.loads(b"\n".join(data))
        except ValueError:
            return raw
        except RecursionError:
            raise FilterError("an event in the tools/list stream nests too deeply to check") from None
        answered, replacement = filter_message(message, self._pending, self._visible)
        if answered:
            self._pending = [i for i in self._pending if not same_id(i, message.get("id"))]
        if replacement is None:
            return raw
        rebuilt = bytearray()
        wrote = False
        for line in lines[:-2] if raw.endswith((b"\n", b"\r")) else lines:
            if line.partition(b":")[0] == b"data":
                if not wrote:
                    rebuilt += b"data: " + _dumps(replacement) + b"\n"
                    wrote = True
                continue
            rebuilt += line + b"\n"
        return bytes(rebuilt + b"\n")
