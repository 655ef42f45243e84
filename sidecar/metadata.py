"""OAuth 2.0 Protected Resource Metadata (RFC 9728), served by the sidecar, never by the backend.

* RFC 9728 §3.1: the metadata of a resource with a path lives at ``/.well-known/oauth-protected-resource``
  followed by that path, so ``/.well-known/oauth-protected-resource/mcp`` describes ``<public_url>/mcp``.
* RFC 9728 §3.3: "The value of the resource member MUST be identical to the protected resource's resource
  identifier value into which the well-known URI path suffix was inserted": ``resource`` is built from
  ``public_url`` and the same suffix. Nothing in these documents names the backend's address.
* RFC 9728 §5.1: the 401 challenge's ``resource_metadata`` points at the document for the requested path.
* A ``public_url`` with a path (``https://host/tenant``) behind an ingress that strips the prefix: RFC 9728
  §3.1 puts the metadata of ``https://host/tenant/mcp`` at ``https://host/.well-known/oauth-protected-resource
  /tenant/mcp``, which is where clients without the challenge's hint look (the TypeScript MCP SDK). A suffix
  that starts with the prefix therefore names ``<origin><suffix>``; any other suffix (the hint's own
  location, ``<public_url>/.well-known/oauth-protected-resource/mcp``) names ``<public_url><suffix>``.
* Browser-based clients read these documents cross-origin: ``OPTIONS`` answers the CORS preflight (Fetch
  standard §4.8) with any origin (the documents are public and take no credentials).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web
from yarl import URL

WELL_KNOWN = "/.well-known/oauth-protected-resource"
# Clients may cache the document briefly; the values change only with a config change and rollout.
METADATA_MAX_AGE_SECONDS = 300
# Browsers may cache the preflight answer this long.
PREFLIGHT_MAX_AGE_SECONDS = 600
PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, OPTIONS",
    "Access-Control-Allow-Headers": "MCP-Protocol-Version, Accept, Authorization, Content-Type",
    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
}


class ResourceMetadata:
    def __init__(self, public_url: URL, authorization_servers: Sequence[str], scopes: Sequence[str]) -> None:
        self._base = str(public_url).rstrip("/")
        self._prefix = public_url.raw_path.rstrip("/")
        self._origin = str(public_url.origin()).rstrip("/")
        self._servers = list(authorization_servers)
        self._scopes = list(scopes)
        self._root_document_url = self._base + WELL_KNOWN

    def relative(self, request_path: str) -> str:
        """The request path as seen under ``public_url`` (an ingress may or may not strip the prefix)."""
        if self._prefix and (request_path == self._prefix or request_path.startswith(self._prefix + "/")):
            return request_path[len(self._prefix) :]
        return request_path

    def metadata_url_for(self, request_path: str) -> str:
        suffix = self.relative(request_path).rstrip("/")
        return self._root_document_url + suffix if suffix else self._root_document_url

    def resource_for(self, suffix: str) -> str:
        """The resource a well-known suffix names (see the module docstring for the prefix rule)."""
        suffix = suffix.rstrip("/")
        if self._prefix and (suffix == self._prefix or suffix.startswith(self._prefix + "/")):
            return self._origin + suffix  # RFC 9728 §3.1 placement: the suffix is the resource's whole path
        return self._base + suffix

    def document(self, suffix: str) -> dict[str, object]:
        doc: dict[str, object] = {
            "resource": self.resource_for(suffix),
            "authorization_servers": self._servers,
            "bearer_methods_supported": ["header"],
        }
        if self._scopes:
            doc["scopes_supported"] = self._scopes
        return doc

    @staticmethod
    async def preflight(_: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    async def handle(self, request: web.Request) -> web.Response:
        path = self.relative(request.path)
        suffix = path[len(WELL_KNOWN) :] if path.startswith(WELL_KNOWN) else ""
        return web.Response(
            body=json.dumps(self.document(suffix)).encode(),
            content_type="application/json",
            headers={
                "Cache-Control": f"public, max-age={METADATA_MAX_AGE_SECONDS}",
                "Access-Control-Allow-Origin": "*",
            },
        )
