"""Which browser origins the default allow-list accepts (sidecar/cors.py), over generated origins: a loopback
public URL accepts exactly its three loopback names on its own scheme and port, anything else is refused."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.cors import LOOPBACK_HOSTS, CorsPolicy

LOOPBACK = st.sampled_from([*LOOPBACK_HOSTS, "LocalHost", "127.0.0.2", "0.0.0.0", "[::2]", "localhost.example"])
HOSTS = st.one_of(LOOPBACK, st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True))
PORTS = st.one_of(st.none(), st.integers(1, 65535))


def origin(scheme: str, host: str, port: int | None) -> str:
    """Serialized as a browser sends it in ``Origin`` (the scheme's default port left out)."""
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


@settings(max_examples=150, deadline=None)
@given(
    public_host=st.sampled_from(LOOPBACK_HOSTS),
    public_port=PORTS,
    scheme=st.sampled_from(["http", "https"]),
    host=HOSTS,
    port=PORTS,
    public_scheme=st.sampled_from(["http", "https"]),
)
@example(public_host="127.0.0.1", public_port=8080, scheme="http", host="localhost", port=8080, public_scheme="http")
@example(public_host="localhost", public_port=None, scheme="http", host="[::1]", port=80, public_scheme="http")
def test_a_loopback_public_url_accepts_only_its_loopback_names_on_its_port(
    public_host: str, public_port: int | None, scheme: str, host: str, port: int | None, public_scheme: str
) -> None:
    policy = CorsPolicy(origin(public_scheme, public_host, public_port) + "/mcp", [])
    default = {"http": 80, "https": 443}
    same_port = (port or default[scheme]) == (public_port or default[public_scheme])
    expected = host.lower() in LOOPBACK_HOSTS and scheme == public_scheme and same_port
    assert policy.allowed(origin(scheme, host, port).lower()) is expected


@settings(max_examples=100, deadline=None)
@given(host=HOSTS, port=PORTS, scheme=st.sampled_from(["http", "https"]))
def test_a_public_hostname_accepts_only_itself(host: str, port: int | None, scheme: str) -> None:
    policy = CorsPolicy("https://mcp.example.com/mcp", [])
    assert policy.allowed(origin(scheme, host, port).lower()) is (
        host == "mcp.example.com" and scheme == "https" and port in (None, 443)
    )
