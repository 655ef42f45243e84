"""OAuth 2.0 Protected Resource Metadata (RFC 9728), served by the sidecar, never by the backend.

* RFC 9728 §3.1: the metadata of a resource with a path lives at ``/.well-known/oauth-protected-resource``
  followed by that path, so ``/.well-known/oauth-protected-resource/mcp`` describes ``<public_url>/mcp``.
* RFC 9728 §3.3: "The value of the resource member MUST be identical to the protected resource's resource
  identifier value into which the well-known URI path suffix was inserted": ``resource`` is built from
  ``public_url`` and the same suffix. Nothing in these documents names the backend's address.
* RFC 9728 §5.1: the 401 challenge's ``resource_metadata`` points at the document for the requested path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web
from yarl import URL

WELL_KNOWN = "/.well-known/oauth-protected-resource"
# Clients may cache the document briefly; the values change only with a config change and rollout.
METADATA_MAX_AGE_SECONDS = 300


class ResourceMetadata:
    def __init__(self, public_url: URL, authorization_servers: Sequence[str], scopes: Sequence[str]) -> None:
        self._base = str(public_url).rstrip("/")
        self._prefix = public_url.raw_path.rstrip("/")
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

    def document(self, suffix: str) -> dict[str, object]:
        suffix = suffix.rstrip("/")
        doc: dict[str, object] = {
            "resource": self._base + suffix,
            "authorization_servers": self._servers,
            "bearer_methods_supported": ["header"],
        }
        if self._scopes:
            doc["scopes_supported"] = self._scopes
        return doc

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
