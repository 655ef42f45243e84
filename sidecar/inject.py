"""Header injection: templates rendered per request into the backend request (DESIGN §9).

Templates name values with ``{...}``: ``{upstream.access_token}``, ``{upstream.id_token}``, ``{claims.<name>}``,
``{client_id}``, ``{scopes}`` (space-separated), ``{subject}``. They are parsed once at start-up into literal
and field parts, so rendering is a join. A header whose value would be empty (a claim the user does not have)
is left out rather than sent empty. A value with CR, LF or NUL is never sent (RFC 9110 §5.5: such characters
are invalid in field values and a classic response-splitting vector); the request is refused instead.

Stripping the client's copies of injected names happens in :mod:`sidecar.headers`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.challenge import BadRequest

if TYPE_CHECKING:
    from sidecar.auth import Identity

_FIELD = re.compile(r"\{([^{}]*)\}")

# Forward mode (client_token: id_token): the verified id_token is what the backend checks.
ID_TOKEN_DEFAULTS: Mapping[str, str] = {
    "Authorization": "Bearer {upstream.id_token}",
    "X-Forwarded-User": "{claims.sub}",
    "X-Forwarded-Email": "{claims.email}",
}

BROKER_DEFAULTS: Mapping[str, str] = {
    "Authorization": "Bearer {upstream.access_token}",
    "X-Forwarded-User": "{claims.sub}",
    "X-Forwarded-Email": "{claims.email}",
}


@dataclass(frozen=True, slots=True)
class Context:
    """What a template can name. ``claims`` are identity claims (id_token or the gate's token claims)."""

    claims: Mapping[str, Any]
    access_token: str | None = None
    id_token: str | None = None
    client_id: str | None = None
    scopes: Sequence[str] = ()
    subject: str | None = None


def _value(ctx: Context, field: str) -> str | None:
    if field == "upstream.access_token":
        return ctx.access_token
    if field == "upstream.id_token":
        return ctx.id_token
    if field == "client_id":
        return ctx.client_id
    if field == "scopes":
        return " ".join(ctx.scopes) or None
    if field == "subject":
        return ctx.subject or _scalar(ctx.claims.get("sub"))
    if field.startswith("claims."):
        return _scalar(ctx.claims.get(field[7:]))
    raise KeyError(field)  # unreachable: config validation rejects unknown placeholders


def _scalar(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def uses_upstream(templates: Mapping[str, str]) -> bool:
    return any(f.startswith("upstream.") for t in templates.values() for f in _FIELD.findall(t))


class HeaderTemplates:
    """Compiled templates; :meth:`render` is called once per proxied request."""

    def __init__(self, templates: Mapping[str, str]) -> None:
        compiled: list[tuple[str, tuple[tuple[bool, str], ...]]] = []
        for name, template in templates.items():
            parts: list[tuple[bool, str]] = []
            pos = 0
            for match in _FIELD.finditer(template):
                if match.start() > pos:
                    parts.append((False, template[pos : match.start()]))
                parts.append((True, match.group(1)))
                pos = match.end()
            if pos < len(template):
                parts.append((False, template[pos:]))
            compiled.append((name, tuple(parts)))
        self._compiled = tuple(compiled)
        self.names = tuple(name for name, _ in compiled)

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def render(self, ctx: Context) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, parts in self._compiled:
            pieces: list[str] = []
            missing = False
            for is_field, text in parts:
                if not is_field:
                    pieces.append(text)
                    continue
                value = _value(ctx, text)
                if not value:
                    missing = True
                    break
                pieces.append(value)
            if missing:
                continue
            value = "".join(pieces)
            if "\r" in value or "\n" in value or "\x00" in value:
                raise BadRequest(f"the value for the {name} header would contain a line break; refusing to send it")
            out[name] = value
        return out


class ClaimsResolver:
    """Gate mode with ``inject_headers``: templates filled from the client token's own claims."""

    def __init__(self, templates: HeaderTemplates) -> None:
        self._templates = templates

    async def __call__(self, identity: Identity) -> Mapping[str, str] | None:
        return self._templates.render(Context(claims=identity.claims))
