"""Header policy between client and backend: a deny-list, never an allow-list (DESIGN §9, §10).

* RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a message is
  forwarded and, for each connection-option in this field, remove any header or trailer field(s) from the
  message with the same name as the connection-option, and then remove the Connection header field itself."
  The fixed hop-by-hop names (Keep-Alive, TE, Transfer-Encoding, Upgrade, Proxy-*) are removed as well.
* Every MCP header of every transport revision passes untouched: ``Mcp-Session-Id``, ``MCP-Protocol-Version``,
  ``Last-Event-ID``, ``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*`` (2026-07-28) and any header we do not know.
* Injected names are stripped from what the client sent before injection, matching case-insensitively and
  treating ``_`` and ``-`` alike (some servers fold one into the other, which would let a client smuggle
  ``X_Forwarded_User`` past a case-only comparison).
* Forwarding headers are the sidecar's: every client-sent ``Forwarded`` (RFC 7239), ``X-Real-IP`` and
  ``X-Forwarded-*``, in any case and with ``_`` for ``-``, is removed, and the sidecar sets its own
  ``X-Forwarded-For`` (the peer), ``X-Forwarded-Proto`` (the public URL's scheme) and ``X-Forwarded-Host``.
  Only when the peer is in ``trusted_proxies`` is the incoming ``X-Forwarded-For`` and ``Forwarded`` chain kept
  and extended with the peer (RFC 7239 §4: each proxy appends its own element).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the sidecar itself on the way to the backend; client copies are replaced, not trusted. Message
# framing (Content-Length, Expect) belongs to the connection that carries the body, so it is set anew too.
_REWRITTEN = frozenset({"host", "origin", "content-length", "expect"})
# Client-sent forwarding headers (besides every name starting with ``x-forwarded``) never reach the backend.
_FORWARDING = frozenset({"forwarded", "x-real-ip"})
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize(name: str) -> str:
    """Header identity for stripping: lower case, ``_`` treated as ``-``."""
    return name.lower().replace("_", "-")


def _connection_options(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(normalize(t.strip()) for v in values for t in v.split(",") if t.strip())


class RequestHeaderPolicy:
    """Builds the backend request's headers in one pass over the client's."""

    def __init__(
        self,
        *,
        backend_host: str,
        backend_origin: str,
        public_scheme: str,
        strip: Iterable[str] = (),
        forward_authorization: bool = True,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        drop = set(HOP_BY_HOP) | _REWRITTEN | {normalize(n) for n in strip}
        if not forward_authorization:
            drop.add("authorization")
        self._drop = frozenset(drop)
        self._backend_host = backend_host
        self._backend_origin = backend_origin
        self._public_scheme = public_scheme
        self._trusted: tuple[_Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)
        self._trusted_peers: dict[str, bool] = {}

    def _is_trusted(self, remote: str) -> bool:
        known = self._trusted_peers.get(remote)
        if known is None:
            try:
                ip = ipaddress.ip_address(remote)
                known = any(ip in net for net in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_peers) > 1024:  # peers are proxies and pods: a handful, but stay bounded
                self._trusted_peers.clear()
            self._trusted_peers[remote] = known
        return known

    def build(
        self,
        src: CIMultiDictProxy[str],
        *,
        remote: str | None,
        inject: Mapping[str, str] | None = None,
    ) -> CIMultiDict[str]:
        drop = self._drop
        extra = _connection_options(src)
        if extra:
            drop = drop | extra
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in src.items():
            key = name.lower()
            if "_" in key:
                key = key.replace("_", "-")
            if key in drop or key in _FORWARDING or key.startswith("x-forwarded"):
                continue
            out.add(name, value)
        out["Host"] = self._backend_host
        if "Origin" in src:
            # An SDK server bound to localhost rejects foreign origins; the sidecar already checked this one.
            out["Origin"] = self._backend_origin
        if self._trusted and remote and self._is_trusted(remote):
            # A trusted hop's chain is kept and extended by the hop itself (RFC 7239 §4, de-facto XFF).
            prior = src.getall("X-Forwarded-For", ())
            out["X-Forwarded-For"] = ", ".join([*prior, remote])
            forwarded = src.getall("Forwarded", ())
            if forwarded:
                node = f'"[{remote}]"' if ":" in remote else remote
                out["Forwarded"] = ", ".join([*forwarded, f"for={node}"])
        elif remote:
            out["X-Forwarded-For"] = remote
        out["X-Forwarded-Proto"] = self._public_scheme
        host = src.get("Host")
        if host:
            out["X-Forwarded-Host"] = host
        if inject:
            for name, value in inject.items():
                out[name] = value
        return out


def response_headers(
    src: Iterable[tuple[str, str]], extra: Mapping[str, str] | None = None
) -> CIMultiDict[str]:
    """The backend's response headers minus hop-by-hop ones; repeated headers (Set-Cookie) stay separate."""
    out: CIMultiDict[str] = CIMultiDict()
    connection: list[str] = []
    for name, value in src:
        key = name.lower()
        if key in HOP_BY_HOP:
            if key == "connection":
                connection.append(value)
            continue
        out.add(name, value)
    if connection:
        for option in {normalize(t.strip()) for v in connection for t in v.split(",") if t.strip()}:
            out.popall(option, None)
    if extra:
        for name, value in extra.items():
            if name.lower() == "vary" and "Vary" in out:
                # Keep the backend's own Vary (caches depend on it) and add ours.
                have = {v.strip().lower() for v in ",".join(out.getall("Vary")).split(",")}
                if value.lower() not in have:
                    out["Vary"] = ", ".join([*out.getall("Vary"), value])
                continue
            out[name] = value
    return out


def has_crlf(value: str) -> bool:
    return "\r" in value or "\n" in value or "\x00" in value
