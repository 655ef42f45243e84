"""The JSON-RPC body parser (strict where parsers disagree) and the tools/list filter (JSON and SSE)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.mcp_message import MessageError, check_headers, loads, parse_body, tools_list_ids
from sidecar.tool_filter import MAX_EVENT_BYTES, FilterError, SseFilter, filter_json


def test_single_and_batch_messages() -> None:
    (one,) = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}')
    assert (one.method, one.tool, one.name, one.id) == ("tools/call", "echo", "echo", 1)
    batch = parse_body(
        b'[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/x"},'
        b'{"jsonrpc":"2.0","id":7,"result":{}}]'
    )
    assert [m.method for m in batch] == ["tools/list", "notifications/x", None]
    assert tools_list_ids(batch) == ["a"]
    (read,) = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}')
    assert read.name == "file:///x" and read.tool is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{",
        b'{"method":"tools/call","method":"tools/list","id":1}',  # duplicate key: parsers disagree on the winner
        b'{"method":"tools/call","id":1,"params":{"name":"a","name":"b"}}',
        b'{"method":"tools/call","id":NaN}',
        b'{"method":"tools/call","id":1,"params":{"name":5}}',
        b'{"method":"tools/call","id":1}',
        b'{"method":7,"id":1}',
        b'{"method":"x","id":{"a":1}}',
        b'{"method":"x","params":"str"}',
        b'"just a string"',
        b"[1]",
        b'{"method":"x"}\xff',
        b'{"method": "\xed\xa0\x80"}',
    ],
)
def test_ambiguous_or_broken_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MessageError):
        parse_body(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


def _strict_reference(text: str) -> Any:
    """What the parser must do: the standard library's full decode with duplicate keys and constants refused."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise MessageError("duplicate")
        return dict(items)

    def constant(name: str) -> Any:
        raise MessageError(name)

    return json.JSONDecoder(object_pairs_hook=pairs, parse_constant=constant).decode(text)


@settings(max_examples=200, deadline=None)
@given(
    value=_JSON,
    before=st.sampled_from(["", " ", "\n", "\t\r\n "]),
    after=st.sampled_from(["", " ", "\n", "x", ",1", "]", " {}", "NaN"]),
    dup=st.booleans(),
)
def test_loads_agrees_with_the_strict_full_decoder(value: Any, before: str, after: str, dup: bool) -> None:
    # The parser scans the common whitespace-free body directly and leaves everything else to the full decoder:
    # whatever the body, it must accept and refuse exactly what the full strict decoder does.
    text = json.dumps(value)
    if dup and text.startswith("{") and text != "{}":
        text = '{"k":1,"k":2,' + text[1:]
    text = before + text + after
    try:
        want: Any = ("ok", _strict_reference(text))
    except (MessageError, json.JSONDecodeError):
        want = ("refused",)
    try:
        got: Any = ("ok", loads(text.encode()))
    except MessageError:
        got = ("refused",)
    assert got == want


def test_mcp_method_and_name_headers_must_match_the_body() -> None:
    msgs = parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}')
    check_headers(msgs, ["tools/call"], ["echo"])
    check_headers(msgs, [], [])
    for methods, names in ((["tools/list"], []), ([], ["delete_all"]), (["tools/call", "tools/call"], [])):
        with pytest.raises(MessageError):
            check_headers(msgs, methods, names)
    batch = parse_body(b'[{"id":1,"method":"tools/list"},{"id":2,"method":"tools/call","params":{"name":"a"}}]')
    with pytest.raises(MessageError):
        check_headers(batch, ["tools/list"], [])


TOOLS = [{"name": "echo", "inputSchema": {}}, {"name": "delete_user", "inputSchema": {}}, {"name": "add"}]


def visible(name: str) -> bool:
    return not name.startswith("delete_")


def response(rid: Any, tools: list[dict[str, Any]] = TOOLS) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": {"tools": tools, "nextCursor": "c"}}


def test_json_response_is_filtered_and_others_untouched() -> None:
    body = json.dumps(response(1), indent=1).encode()
    out = json.loads(filter_json(body, [1], visible))
    assert [t["name"] for t in out["result"]["tools"]] == ["echo", "add"]
    assert out["result"]["nextCursor"] == "c"
    assert filter_json(body, [2], visible) == body  # another id: byte-identical
    assert filter_json(body, ["1"], visible) == body  # "1" is not 1
    nothing_hidden = json.dumps(response(1, TOOLS[:1])).encode()
    assert filter_json(nothing_hidden, [1], visible) == nothing_hidden


def test_json_batch_keeps_the_other_elements_byte_identical() -> None:
    other = b'{ "jsonrpc" : "2.0", "id": 9, "result": {"tools": [{"name": "delete_me"}]} }'
    body = b"[ " + other + b" ,\n" + json.dumps(response("t")).encode() + b"]"
    out = filter_json(body, ["t"], visible)
    assert other in out
    parsed = json.loads(out)
    assert [t["name"] for t in parsed[1]["result"]["tools"]] == ["echo", "add"]


def sse_event(data: dict[str, Any], eol: bytes = b"\n", event_id: bytes = b"e1") -> bytes:
    return b"event: message" + eol + b"id: " + event_id + eol + b"data: " + json.dumps(data).encode() + eol + eol


def run(stream: bytes, cuts: list[int], ids: list[Any]) -> bytes:
    f = SseFilter(ids, visible)
    out = bytearray()
    last = 0
    for cut in sorted(set(cuts)):
        out += f.feed(stream[last:cut])
        last = cut
    out += f.feed(stream[last:])
    return bytes(out + f.finish())


@settings(max_examples=120, deadline=None)
@given(cuts=st.lists(st.integers(0, 600), max_size=8), eol=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_sse_filter_is_independent_of_chunking(cuts: list[int], eol: bytes) -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"tools": [{"name": "delete_x"}]}}
    keepalive = b":" + eol + eol
    stream = sse_event(note, eol) + keepalive + sse_event(response(3), eol, b"e2") + sse_event(response(4), eol)
    out = run(stream, cuts, [3])
    # Everything but the answer to id 3 is byte-identical, and the rest after it passes straight through.
    assert out.startswith(sse_event(note, eol) + keepalive)
    assert out.endswith(sse_event(response(4), eol))
    middle = out[len(sse_event(note, eol) + keepalive) : len(out) - len(sse_event(response(4), eol))]
    assert b"id: e2\n" in middle and b"event: message\n" in middle
    data = next(line for line in middle.split(b"\n") if line.startswith(b"data: "))
    assert [t["name"] for t in json.loads(data[6:])["result"]["tools"]] == ["echo", "add"]


def test_sse_multiline_data_and_nothing_held_after_the_answer() -> None:
    f = SseFilter([1], visible)
    text = json.dumps(response(1), indent=2).encode()
    event = b"".join(b"data: " + line + b"\n" for line in text.split(b"\n")) + b"\n"
    out = f.feed(event)
    assert b"delete_user" not in out and json.loads(out.split(b"data: ", 1)[1])["id"] == 1
    assert f.feed(b"data: partial") == b"data: partial"  # answered: the stream is no longer parsed


def test_sse_unfinished_answer_at_end_is_dropped_and_huge_events_stop() -> None:
    f = SseFilter([1], visible)
    assert f.feed(b"data: " + json.dumps(response(1)).encode()) == b""
    assert f.finish() == b""
    g = SseFilter([1], visible)
    with pytest.raises(FilterError):
        g.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1))
