"""The request head is built from typed framing and the header text's own bytes; nothing is sniffed (issue 11)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.backend import CHUNKED, Length, UnrepresentableHeader, serialize_head


def test_unrepresentable_headers_are_refused_before_anything_is_sent() -> None:
    for headers in ([("X-A", "a\r\nX-Forwarded-User: admin")], [("X-A", "a\x00")], [("X-A", "a\rb")],
                    [("X-A", "a\nb")], [("X-A\r\nX-B", "v")], [("X-A", "\ud800")]):
        with pytest.raises(UnrepresentableHeader):
            serialize_head("GET", "/", headers, None)
    with pytest.raises(UnrepresentableHeader):
        serialize_head("GET", "/a b", [], None)


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.text("abcXYZ-_!#$%&'*+.^`|~019", min_size=1, max_size=10),
            st.binary(max_size=20).filter(lambda b: not set(b) & {0, 10, 13}).map(
                lambda b: b.decode("utf-8", "surrogateescape")
            ),
        ),
        max_size=6,
    ),
    framing=st.sampled_from([None, CHUNKED, Length(0), Length(12345)]),
)
def test_the_head_is_exactly_the_typed_framing_and_the_bytes_given(
    headers: list[tuple[str, str]], framing: object
) -> None:
    head = serialize_head("POST", "/mcp", headers, framing)  # type: ignore[arg-type]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /mcp HTTP/1.1"
    assert lines[1 : 1 + len(headers)] == [
        n.encode() + b": " + v.encode("utf-8", "surrogateescape") for n, v in headers
    ]
    framing_lines = lines[1 + len(headers) : -2]
    expected = {None: [], CHUNKED: [b"Transfer-Encoding: chunked"]}.get(framing)  # type: ignore[call-overload]
    if expected is None:
        expected = [b"Content-Length: %d" % framing.n]  # type: ignore[attr-defined]
    assert framing_lines == expected
    assert head.endswith(b"\r\n\r\n")
