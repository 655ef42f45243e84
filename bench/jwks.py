"""Signed bearers for the rows that verify signatures: one RSA key per benchmark run, its JWKS, a server.

The benchmark process makes the key (``signing_key()``), writes the public half as a JWK Set into the
``jwks`` service's directory (``jwks_document()``) and signs the ``signed`` bearer with it
(``signed_jwt()``). The service is this module run as a program: it serves that file and nothing else.

    python -m bench.jwks --port 8004 --file jwks.json    # GET /jwks.json
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "bench-jwks-1"
ISSUER = "https://issuer.bench.invalid"
AUDIENCE = "mcp-bench"
JWKS_PATH = "/jwks.json"


@functools.cache
def signing_key() -> rsa.RSAPrivateKey:
    """The run's RSA-2048 key (what IdPs sign access tokens with)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_document() -> str:
    public: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key().public_key()))
    public.update({"kid": KID, "alg": "RS256", "use": "sig"})
    return json.dumps({"keys": [public]})


def signed_jwt(lifetime_seconds: int = 86_400, subject: str = "bench-user") -> str:
    """An RS256 access token signed with the run's key: ``iss``, ``aud`` and ``exp`` a day ahead."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + lifetime_seconds,
              "scope": "mcp:tools"}
    return jwt.encode(claims, signing_key(), algorithm="RS256", headers={"kid": KID})


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True, help="the JWK Set to serve at /jwks.json")
    args = parser.parse_args()
    body = args.file.read_bytes()

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get(JWKS_PATH, handle)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
