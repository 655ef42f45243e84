"""HTTP to the IdP: the one place aiohttp is called for it and its exceptions translated (to :class:`IdPUnavailable`).

Every answer is read whole under ``MAX_RESPONSE_BYTES`` and the client's deadline (``sidecar.bounded``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from sidecar.bounded import BodyTooLarge, read_bounded
from sidecar.idp.errors import IdPUnavailable

log = logging.getLogger("sidecar.idp")

# The IdP answers a token request within a few hundred milliseconds when healthy; ten seconds covers a slow
# IdP without holding an MCP request (and the refresh lock, which must outlive it) for much longer.
# Matches the default of the ``idp_timeout_seconds`` setting.
DEFAULT_IDP_TIMEOUT_SECONDS = 10.0
# A discovery document, key set or token response is a few kilobytes; refuse to buffer more than this.
MAX_RESPONSE_BYTES = 1024 * 1024
_USER_AGENT = "mcp-auth-sidecar"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    retry_after: float | None


def parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: not worth parsing for a hint
    return seconds if seconds >= 0 else None


class IdPTransport:
    """Requests to one IdP on the caller's session (never closed here), each under ``timeout`` seconds."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float = DEFAULT_IDP_TIMEOUT_SECONDS) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_seconds = timeout

    async def get_json(self, url: str, what: str) -> dict[str, Any]:
        answer = await self.send("GET", url)
        if answer.status != 200:
            raise IdPUnavailable(
                f"the IdP's {what} endpoint failed", status=answer.status, retry_after=answer.retry_after
            )
        return self.json_object(answer, what)

    @staticmethod
    def json_object(answer: HttpAnswer, what: str) -> dict[str, Any]:
        try:
            doc = json.loads(answer.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise IdPUnavailable(f"the IdP's {what} answer is not JSON", status=answer.status) from exc
        if not isinstance(doc, dict):
            raise IdPUnavailable(f"the IdP's {what} answer is not a JSON object", status=answer.status)
        return doc

    async def send(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool | None = None,
    ) -> HttpAnswer:
        all_headers = {
            "Accept": "application/json",
            # The caller's session may be the proxy's (auto_decompress=False): ask for an unencoded body.
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
            **(headers or {}),
        }
        try:
            async with self._session.request(
                method,
                url,
                data=dict(data) if data is not None else None,
                headers=all_headers,
                timeout=self._timeout,
                # A token POST carrying client credentials is never replayed to another location.
                allow_redirects=method == "GET" if follow_redirects is None else follow_redirects,
            ) as response:
                try:
                    # One deadline for the whole exchange: the body read gets what the request left of it.
                    body = await read_bounded(
                        response.content,
                        limit=MAX_RESPONSE_BYTES,
                        timeout=self._timeout_seconds,
                        declared=response.content_length,
                    )
                except BodyTooLarge:
                    raise IdPUnavailable("the IdP's answer is too large", status=response.status) from None
                return HttpAnswer(
                    status=response.status,
                    body=body,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
        except TimeoutError as exc:
            log.warning("idp request timed out: %s %s", method, url)
            raise IdPUnavailable("the IdP did not answer in time") from exc
        except aiohttp.ClientError as exc:
            log.warning("idp request failed: %s %s: %s", method, url, type(exc).__name__)
            raise IdPUnavailable(f"the IdP could not be reached ({type(exc).__name__})") from exc
