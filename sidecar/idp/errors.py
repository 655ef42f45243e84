"""The IdP client's errors, and the sanitizing of IdP-supplied text before it is kept, logged or shown.

:class:`IdPRejected` is an OAuth error answer from the IdP (on ``invalid_grant`` or ``invalid_client`` the
caller drops the upstream credentials and asks for re-authorization); :class:`IdPUnavailable` covers timeouts,
connection errors, 5xx, 429 and bodies that are not OAuth JSON (the caller keeps everything and answers
503); :class:`IdPMisconfigured` is an ``IdPUnavailable`` that will not heal by itself; :class:`IdTokenInvalid`
is an ID token that failed verification.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

# RFC 6749 §5.2 leaves ``error_description`` unbounded; we keep at most this many UTF-8 bytes of it.
MAX_DESCRIPTION_BYTES = 120
# Unicode categories removed from IdP text: controls (C0, DEL, C1), format characters (bidi overrides,
# zero-width), line and paragraph separators. They could forge log lines or hide text.
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class IdPError(Exception):
    """Base of every error this module raises."""


class IdPRejected(IdPError):
    """The IdP answered with an OAuth error (RFC 6749 §5.2), e.g. ``invalid_grant``.

    ``description`` is already sanitized. When :attr:`drops_credentials` is true the stored upstream
    credentials are dead (revoked, expired, reused or the client itself is refused): drop them and ask the
    user to re-authorize (design §7.4).
    """

    def __init__(self, error: str, description: str | None = None, *, status: int = 400) -> None:
        self.error = error
        self.description = description
        self.status = status
        super().__init__(f"{error}: {description}" if description else error)

    @property
    def drops_credentials(self) -> bool:
        return self.error in ("invalid_grant", "invalid_client")


class IdPUnavailable(IdPError):
    """The IdP could not give a usable answer now: timeout, connection error, 5xx, 429, a non-JSON body.

    Transient by nature: keep every credential, forward a still-valid token or answer 503 (design §7.4).
    ``retry_after`` carries the IdP's ``Retry-After`` seconds when it sent one.
    """

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason if status is None else f"{reason} (HTTP {status})")


class IdPMisconfigured(IdPUnavailable):
    """The IdP answers, but not as configured (issuer mismatch, metadata without a token endpoint, ...).

    Handled like :class:`IdPUnavailable` on the request path (nothing is dropped), but it will not heal by
    waiting: an operator has to fix the configuration.
    """


class IdTokenInvalid(IdPError):
    """An ID token failed verification (OIDC Core §3.1.3.7). ``reason`` is short and safe to log; ``kind`` is
    the typed reason for metrics (``expired`` or ``bad_signature``), never derived from the message."""

    def __init__(self, reason: str, *, kind: Literal["expired", "bad_signature"] = "bad_signature") -> None:
        self.reason = reason
        self.kind: Literal["expired", "bad_signature"] = kind
        super().__init__(reason)



def sanitize_description(value: object) -> str | None:
    """Make an IdP-supplied ``error_description`` safe to log and to return to a client.

    Control, format and separator characters are removed (whitespace ones become a space, runs of spaces
    collapse), and the text is cut to at most ``MAX_DESCRIPTION_BYTES`` bytes of UTF-8 without splitting a
    character. Anything that is not a string, or nothing left, gives ``None``.
    """
    if not isinstance(value, str):
        return None
    kept: list[str] = []
    for char in value:
        if unicodedata.category(char) in _STRIPPED_CATEGORIES:
            if char.isspace():
                kept.append(" ")
            continue
        kept.append(char)
    text = " ".join("".join(kept).split())
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_DESCRIPTION_BYTES:
        # "ignore" drops the trailing partial multi-byte sequence the cut may leave.
        text = encoded[:MAX_DESCRIPTION_BYTES].decode("utf-8", "ignore").rstrip()
    return text or None
