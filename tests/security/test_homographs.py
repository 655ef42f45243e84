"""The consent page shows what is true (issue 12, item 6): hosts in ASCII (punycode) with the Unicode form only
beside it when it differs; invisible and bidi characters never reach a displayed name."""

from __future__ import annotations

import time

import pytest

from sidecar.oauth import OAUTH
from sidecar.oauth.cimd import client_from_document, client_id_url_problem
from sidecar.oauth.clients import clean_name, host_forms
from sidecar.oauth.registration import validate
from tests.integration.oauth.flow import authorize_url
from tests.support.oauth_harness import DEFAULT_REDIRECT_URI, Browser, Sidecar

CYRILLIC_A = "\u0430"
LOOKALIKE = "https://xn--clude-5ve.ai/oauth/client.json"  # cl<Cyrillic a>ude.ai, as a client id must be written


def test_hosts_are_shown_in_ascii_with_unicode_beside() -> None:
    assert host_forms(f"https://cl{CYRILLIC_A}ude.ai/x") == ("xn--clude-5ve.ai", f"cl{CYRILLIC_A}ude.ai")
    assert host_forms("https://xn--clude-5ve.ai/x") == ("xn--clude-5ve.ai", f"cl{CYRILLIC_A}ude.ai")
    assert host_forms("https://claude.ai/x") == ("claude.ai", None)


def test_unicode_client_id_urls_are_refused() -> None:
    assert client_id_url_problem(f"https://cl{CYRILLIC_A}ude.ai/oauth/client.json") is not None
    assert client_id_url_problem("https://evil.example\\@claude.ai/oauth/client.json") is not None
    assert client_id_url_problem(LOOKALIKE) is None


@pytest.mark.parametrize("bad", ["\u202e", "\u2066", "\u200b", "\u200f", "\u00ad", "\u061c", "\x07", "\u2028"])
def test_invisible_and_bidi_characters_are_stripped_from_names(bad: str) -> None:
    assert clean_name(f"Good{bad}App", 200) == "GoodApp"
    client, _ = validate({"redirect_uris": [DEFAULT_REDIRECT_URI], "client_name": f"Good{bad}App"})
    assert client.client_name == "GoodApp"
    doc = {"client_id": "https://app.example.com/c.json", "redirect_uris": [DEFAULT_REDIRECT_URI],
           "client_name": f"Good{bad}App"}
    assert client_from_document("https://app.example.com/c.json", doc).client_name == "GoodApp"


async def test_consent_page_names_a_lookalike_client_in_punycode(sidecar: Sidecar, browser: Browser) -> None:
    doc = {"client_id": LOOKALIKE, "redirect_uris": [DEFAULT_REDIRECT_URI],
           "client_name": "Claude \u202emoc.elgoog"}
    client = client_from_document(LOOKALIKE, doc)
    # The look-alike host cannot be served on loopback: the document is put in the fetcher's cache.
    sidecar.app[OAUTH].cimd._cache[LOOKALIKE] = (client, time.monotonic() + 300)
    step = await browser.get(authorize_url(sidecar, LOOKALIKE))
    assert step.status == 200
    assert "<strong>xn--clude-5ve.ai</strong>" in step.text
    assert f"cl{CYRILLIC_A}ude.ai" in step.text  # beside it, marked as the Unicode spelling
    assert "https://xn--clude-5ve.ai/oauth/client.json" in step.text
    assert "\u202e" not in step.text
