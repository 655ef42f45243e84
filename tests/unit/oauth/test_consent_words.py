"""The consent page's permission list (issue 13): words people understand, configurable, always escaped."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.oauth.consent import DEFAULT_SCOPE_DESCRIPTIONS, scope_lines

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


def test_built_in_words_and_the_code_beside_them() -> None:
    html = scope_lines(("openid", "offline_access", "tickets:read"), {})
    assert DEFAULT_SCOPE_DESCRIPTIONS["offline_access"] in html and "<code>offline_access</code>" in html
    assert "<li><code>tickets:read</code></li>" in html  # no description: the code alone


def test_configured_words_replace_and_extend() -> None:
    html = scope_lines(("email", "tickets:read"), {"email": "Your address", "tickets:read": "Read tickets"})
    assert "Your address" in html and "Read tickets" in html
    assert DEFAULT_SCOPE_DESCRIPTIONS["email"] not in html


def test_no_scopes_still_says_something() -> None:
    assert "<li>" in scope_lines((), {})


@given(scopes=st.lists(text, max_size=4), words=st.dictionaries(text, text, max_size=4))
@settings(max_examples=100, deadline=None)
def test_nothing_a_client_or_operator_writes_becomes_markup(scopes: list[str], words: dict[str, str]) -> None:
    html = scope_lines(tuple(scopes), words)
    stripped = html.replace("<li>", "").replace("</li>", "").replace("<code>", "").replace("</code>", "")
    assert "<" not in stripped and ">" not in stripped
