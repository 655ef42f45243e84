"""The JSON-RPC body of an MCP request, parsed only when a policy or the audit trail needs it (issue 15).

* JSON-RPC 2.0 §4/§6: a request is one object or, in MCP 2025-03-26, a batch (a non-empty array) of them;
  objects without ``method`` are responses the client sends back (sampling, elicitation) and are not subject
  to the policy.
* MCP 2026-07-28 ``Mcp-Method`` / ``Mcp-Name`` headers: "servers MUST reject requests where the header values
  do not match the body". Older servers do not check them, so the sidecar does, and never trusts a header alone:
  a mismatch is 400.
* Parsing is strict where a lax parser would let the sidecar and the backend see different requests: duplicate
  object keys, ``NaN``/``Infinity``, invalid UTF-8 and a compressed body are refused, never guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

# A JSON-RPC request body the policy reads whole. Tool arguments can be large (documents, images in base64);
# beyond this the request is refused with 413 rather than forwarded unchecked.
MAX_POLICY_BODY_BYTES: Final = 8 * 1024 * 1024
_NAME_PARAM: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri",
                      "resources/subscribe": "uri", "resources/unsubscribe": "uri"}


class MessageError(ValueError):
    """The body cannot be judged: answered 400 when a policy is configured."""


class Message(NamedTuple):
    """One JSON-RPC message of the request body (immutable; a tuple, built once per message per request)."""

    method: str | None  # None: a response (result/error) from the client
    id: Any = None
    params: Any = None
    tool: str | None = None  # tools/call: params.name
    name: str | None = None  # what Mcp-Name names: params.name (tools, prompts) or params.uri (resources)
    has_id: bool = False


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        # RFC 8259 §4: "The names within an object SHOULD be unique"; parsers disagree on which copy wins,
        # so the sidecar would judge one message while the backend runs another. (The dict is built in C and
        # its size compared: the per-key loop is only run to name the duplicate.)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MessageError(f"duplicate key {key[:40]!r} in a JSON object")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise MessageError(f"{name} is not valid JSON")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_no_constant)
# The decoder's C scanner with the same hooks. JSONDecoder.decode() is this scanner plus two regex matches for the
# whitespace around the value; a body with none (what clients send) is scanned directly, anything else goes
# through decode() for its exact rules and messages.
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


def loads(body: bytes | str) -> Any:
    """Strict JSON (RFC 8259): UTF-8 only, unique keys, no NaN/Infinity. Raises :class:`MessageError`."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1  # no value at position 0 (leading whitespace, an empty body): decode() says why
        if end != len(text):
            return _DECODER.decode(text)  # whitespace around the value, or extra data after it
        return value
    except UnicodeDecodeError:
        raise MessageError("the body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise MessageError(f"the body is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise MessageError("the body nests too deeply") from None
    except MessageError:
        raise
    except ValueError:
        # Python's integer conversion limit (sys.get_int_max_str_digits, 4300 digits by default).
        raise MessageError("the body holds a number too long to read") from None


def _message(obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise MessageError("each JSON-RPC message must be an object")
    method = obj.get("method")
    msg_id = obj.get("id")
    has_id = msg_id is not None or "id" in obj
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, (str, int, float))):
        raise MessageError("a JSON-RPC id must be a string or a number")
    if method is None:
        if "method" in obj:
            raise MessageError("'method' must be a string")
        return Message(None, msg_id, None, has_id=has_id)
    if not isinstance(method, str):
        raise MessageError("'method' must be a string")
    params = obj.get("params")
    if params is not None and not isinstance(params, (dict, list)):
        raise MessageError("'params' must be an object or an array")
    key = _NAME_PARAM.get(method)
    if key is None:
        return Message(method, msg_id, params, None, None, has_id)
    value = params.get(key) if isinstance(params, dict) else None
    if not isinstance(value, str):
        raise MessageError(f"{method} needs a string params.{key}")
    return Message(method, msg_id, params, value if method == "tools/call" else None, value, has_id)


def parse_body(body: bytes) -> tuple[Message, ...]:
    """The messages of a request body (one, or a batch's elements in order). Raises :class:`MessageError`."""
    data = loads(body)
    if isinstance(data, list):
        if not data:
            raise MessageError("an empty batch")
        return tuple(_message(item) for item in data)
    return (_message(data),)


def _single(values: Sequence[str], header: str) -> str | None:
    if not values:
        return None
    if len(values) > 1:
        raise MessageError(f"more than one {header} header")
    return values[0]


def check_headers(messages: Sequence[Message], methods: Sequence[str], names: Sequence[str]) -> None:
    """``Mcp-Method`` / ``Mcp-Name`` must agree with the body (every element of a batch). Raises MessageError."""
    if not methods and not names:
        return  # neither header sent (every client before MCP 2026-07-28)
    method = _single(methods, "Mcp-Method")
    name = _single(names, "Mcp-Name")
    for msg in messages:
        if method is not None and msg.method != method:
            raise MessageError("the Mcp-Method header does not match the method in the body")
        if name is not None and msg.name != name:
            raise MessageError("the Mcp-Name header does not match the name in the body")


def tools_list_ids(messages: Iterable[Message]) -> list[Any]:
    """The ids of the ``tools/list`` requests (whose results ``hide_denied_tools`` filters)."""
    return [m.id for m in messages if m.method == "tools/list" and m.has_id and m.id is not None]


def same_id(a: Any, b: Any) -> bool:
    """JSON-RPC ids compare by JSON value: 1 and "1" differ, and so do True and 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def within_values(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value holds at most ``limit`` values in all (iterative: no recursion limit, and it
    stops as soon as the count is passed, so a huge value costs no more than a small one)."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
