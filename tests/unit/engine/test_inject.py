"""Header templates (DESIGN §9)."""

from __future__ import annotations

import pytest

from sidecar.challenge import BadRequest
from sidecar.config import header_template_problems
from sidecar.inject import BROKER_DEFAULTS, Context, HeaderTemplates


def test_broker_defaults_render_upstream_bearer_and_identity() -> None:
    t = HeaderTemplates(BROKER_DEFAULTS)
    out = t.render(Context(claims={"sub": "u1", "email": "u1@example.com"}, access_token="up-at"))
    assert out == {"Authorization": "Bearer up-at", "X-Forwarded-User": "u1", "X-Forwarded-Email": "u1@example.com"}


def test_missing_value_leaves_the_header_out_instead_of_sending_it_empty() -> None:
    t = HeaderTemplates({"X-Email": "{claims.email}", "X-Sub": "user:{claims.sub}"})
    assert t.render(Context(claims={"sub": "u1"})) == {"X-Sub": "user:u1"}


def test_every_placeholder() -> None:
    t = HeaderTemplates(
        {
            "X-A": "{upstream.access_token}",
            "X-I": "{upstream.id_token}",
            "X-C": "{client_id}",
            "X-S": "{scopes}",
            "X-U": "{subject}",
            "X-G": "{claims.groups_count}",
            "X-V": "{claims.email_verified}",
        }
    )
    out = t.render(
        Context(
            claims={"groups_count": 3, "email_verified": True},
            access_token="a",
            id_token="i",
            client_id="c",
            scopes=("openid", "email"),
            subject="s",
        )
    )
    assert out == {"X-A": "a", "X-I": "i", "X-C": "c", "X-S": "openid email", "X-U": "s", "X-G": "3", "X-V": "true"}


@pytest.mark.parametrize("evil", ["a\r\nX-Admin: 1", "a\nb", "a\rb", "a\x00b"])
def test_values_with_line_breaks_are_never_sent(evil: str) -> None:
    t = HeaderTemplates({"X-Forwarded-Email": "{claims.email}"})
    with pytest.raises(BadRequest) as err:
        t.render(Context(claims={"email": evil}))
    assert err.value.status == 400


def test_config_rejects_unknown_placeholders_and_bad_names() -> None:
    problems = header_template_problems({"X-A": "{upstream.password}", "Bad Name": "x", "X-B": "a\nb"})
    assert any("unknown placeholder {upstream.password}" in p for p in problems)
    assert any("not a valid HTTP header name" in p for p in problems)
    assert any("CR or LF" in p for p in problems)

