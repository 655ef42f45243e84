"""Forwarding headers are the sidecar's (issue 11): a client cannot tell the backend who it is or where it came
from. Every client-sent ``Forwarded``, ``X-Real-IP`` and ``X-Forwarded-*`` (any case, ``_`` for ``-``) is removed;
only a peer in ``trusted_proxies`` has its ``X-Forwarded-For`` / ``Forwarded`` chain kept, and extended."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.headers import RequestHeaderPolicy
from tests.security.conftest import SidecarFor
from tests.support.h11_backend import H11Backend

FORGED = [
    ("Forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
    ("X-Real-IP", "10.0.0.1"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X_Forwarded_Host", "admin.internal"),
    ("x_real_ip", "10.0.0.1"),
    ("X-FORWARDED-USER", "admin"),
]


async def test_forged_forwarding_headers_never_reach_the_backend(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    client = await sidecar_for(backend)
    headers = CIMultiDict([("Authorization", "Bearer t"), *FORGED])
    assert (await client.get("/mcp", headers=headers)).status == 200
    got = backend.requests[-1]
    names = {k.lower().replace(b"_", b"-") for k, _ in got.headers}
    assert not names & {b"forwarded", b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-ssl",
                        b"x-forwarded-scheme", b"x-forwarded-user"}
    assert got.getall("X-Forwarded-For") == [b"127.0.0.1"]
    assert got.getall("X-Forwarded-Proto") == [b"https"]
    assert b"admin.internal" not in b"".join(v for _, v in got.headers)


async def test_a_trusted_hop_has_its_chain_kept_and_extended(backend: H11Backend, sidecar_for: SidecarFor) -> None:
    client = await sidecar_for(backend, trusted_proxies=["127.0.0.0/8"])
    headers = {"Authorization": "Bearer t", "X-Forwarded-For": "203.0.113.7", "Forwarded": "for=203.0.113.7",
               "X-Real-IP": "10.9.9.9"}
    assert (await client.get("/mcp", headers=headers)).status == 200
    got = backend.requests[-1]
    assert got.getall("X-Forwarded-For") == [b"203.0.113.7, 127.0.0.1"]
    assert got.getall("Forwarded") == [b"for=203.0.113.7, for=127.0.0.1"]
    assert got.get("X-Real-IP") is None


def _spellings(name: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(name), max_size=len(name)).flatmap(
        lambda upper: st.just("".join(c.upper() if u else c.lower() for c, u in zip(name, upper, strict=True)))
    ).flatmap(lambda n: st.sampled_from([n, n.replace("-", "_")]))


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["Forwarded", "X-Real-IP", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto",
                          "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Anything"]).flatmap(_spellings),
    value=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
)
def test_any_spelling_of_a_forwarding_header_is_dropped(name: str, value: str) -> None:
    policy = RequestHeaderPolicy(backend_host="b:1", backend_origin="http://b:1", public_scheme="https")
    out = policy.build(CIMultiDictProxy(CIMultiDict([(name, value), ("Host", "h")])), remote="192.0.2.1")
    forwarding: dict[str, list[str]] = {}
    for k, v in out.items():
        key = k.lower().replace("_", "-")
        if key.startswith("x-forwarded") or key in ("forwarded", "x-real-ip"):
            forwarding.setdefault(key, []).append(v)
    assert forwarding == {"x-forwarded-for": ["192.0.2.1"], "x-forwarded-proto": ["https"], "x-forwarded-host": ["h"]}
