"""What every configuration is asked to do: the same POST ``tools/list`` with the same headers and bearer.

Kept in one place so that the wrk script, the fixed-rate client, the SSE client and the minimal backend
agree byte for byte.
"""

from __future__ import annotations

import base64
import json
import os
import time

MCP_PATH = "/mcp"
SSE_PATH = "/sse"
PROTOCOL_VERSION = "2025-06-18"

#: The JSON-RPC request every configuration receives (wrk, the fixed-rate client, sanity checks).
TOOLS_LIST_REQUEST: bytes = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}, separators=(",", ":")
).encode()


def _tools_list_result() -> bytes:
    """A fixed ``tools/list`` result of about 505 bytes (two small tools), as a real server would send."""
    result = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [
                {
                    "name": "echo",
                    "description": "Echo the given text back unchanged",
                    "inputSchema": {
                        "type": "object",
                        "properties": {"text": {"type": "string"}},
                        "required": ["text"],
                    },
                },
                {
                    "name": "add",
                    "description": "Add two integers and return the sum as structured content.",
                    "inputSchema": {
                        "type": "object",
                        "properties": {
                            "a": {"type": "integer"},
                            "b": {"type": "integer"},
                        },
                        "required": ["a", "b"],
                    },
                    "outputSchema": {
                        "type": "object",
                        "properties": {"result": {"type": "integer"}},
                        "required": ["result"],
                    },
                },
            ]
        },
    }
    return json.dumps(result, separators=(",", ":")).encode()


TOOLS_LIST_RESULT: bytes = _tools_list_result()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_jwt(lifetime_seconds: int = 86_400, subject: str = "bench-user") -> str:
    """A well-formed RS256-shaped JWT whose signature is random bytes.

    The sidecar's gate mode decodes without verifying unless ``jwks_url`` is set, so this token passes
    there; it is also what a real client would send (about the size of an RS256 access token).
    """
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
    claims = {
        "iss": "https://issuer.bench.invalid",
        "sub": subject,
        "aud": "mcp-bench",
        "iat": now,
        "exp": now + lifetime_seconds,
        "scope": "mcp:tools",
    }
    parts = [
        _b64url(json.dumps(header, separators=(",", ":")).encode()),
        _b64url(json.dumps(claims, separators=(",", ":")).encode()),
        _b64url(os.urandom(256)),
    ]
    return ".".join(parts)


def request_headers(token: str) -> dict[str, str]:
    """Headers of the POST ``tools/list``: what the MCP streamable HTTP transport requires."""
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
    }


def sse_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
