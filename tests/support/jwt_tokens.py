"""Minting bearer tokens for tests: unsigned (decode-only gate) and RSA-signed, plus a JWKS server app.

``unsigned(claims)`` gives a compact JWT with ``alg: none`` and an empty signature part replaced by a dummy
one (the gate in decode-only mode never looks at it). ``RsaIssuer`` holds a key pair, signs tokens with
RS256 and serves its JWKS document from an aiohttp app (``issuer.jwks_app()``), counting fetches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def compact(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    """A JWS compact serialization of arbitrary JSON values (nothing checked, nothing signed)."""
    return f"{b64url_json(header)}.{b64url_json(payload)}.{b64url(signature)}"


def unsigned(claims: Mapping[str, Any] | None = None, **extra: Any) -> str:
    """A JWT-shaped bearer with the given claims, as an IdP would issue it, minus a real signature."""
    payload = {"sub": "user-1", "iat": int(time.time()), **(claims or {}), **extra}
    return compact({"alg": "RS256", "typ": "JWT"}, payload)


def valid(ttl: float = 3600, **claims: Any) -> str:
    now = time.time()
    return unsigned({"exp": int(now + ttl), "iat": int(now)}, **claims)


def expired(ago: float = 3600, **claims: Any) -> str:
    now = time.time()
    return unsigned({"exp": int(now - ago), "iat": int(now - ago - 3600)}, **claims)


class RsaIssuer:
    """An RSA key pair that signs RS256 tokens and serves its public key as a JWKS document."""

    def __init__(self, issuer: str = "https://issuer.test", kid: str | None = None) -> None:
        self.issuer = issuer
        self.kid = kid or uuid.uuid4().hex[:8]
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_fetches = 0
        self.jwks_status = 200

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def sign(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        ttl: float = 3600,
        audience: str | None = "mcp-test",
        algorithm: str = "RS256",
        kid: str | None = None,
        **extra: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.issuer, "sub": "user-1", "iat": now, "exp": now + int(ttl)}
        if audience is not None:
            payload["aud"] = audience
        payload.update(claims or {})
        payload.update(extra)
        return jwt.encode(payload, self.private_key, algorithm=algorithm, headers={"kid": kid or self.kid})

    def sign_raw(self, payload: Any, header: Mapping[str, Any] | None = None) -> str:
        """RS256-sign any JSON payload as is (PyJWT would refuse odd claim types): for hostile-input tests."""
        head = {"alg": "RS256", "typ": "JWT", "kid": self.kid, **(header or {})}
        signing_input = f"{b64url_json(head)}.{b64url_json(payload)}"
        signature = self.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def jwks_app(self) -> web.Application:
        async def handle(_: web.Request) -> web.Response:
            self.jwks_fetches += 1
            if self.jwks_status != 200:
                return web.Response(status=self.jwks_status, text="unavailable")
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/jwks.json", handle)
        return app

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def claims(self, ttl: float = 3600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": "mcp-test", "sub": "user-1", "iat": now, "exp": now + int(ttl), **extra}


def hs256(claims: Mapping[str, Any], secret: bytes, kid: str) -> str:
    """An HMAC-signed token; with the issuer's public key as the secret it is the classic key-confusion attack
    (built by hand: PyJWT refuses to use a PEM key as an HMAC secret)."""
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64url_json(dict(claims))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def alg_none(claims: Mapping[str, Any], kid: str) -> str:
    return compact({"alg": "none", "typ": "JWT", "kid": kid}, dict(claims), b"")
