"""Redirect URIs read the way browsers read them (issue 12, item 1).

The attack: a client registered with ``http://127.0.0.1:9/callback``; the victim consented once, so the consent
is remembered. The attacker sends the victim an authorize link whose ``redirect_uri`` a lax parser reads as
that loopback URI on another port, but which a browser (WHATWG URL) sends to the attacker's host. The code,
bound to the attacker's PKCE challenge, would go to the attacker. Every such URI must be refused: at
registration, in client metadata documents and at ``/authorize``.

``ada-url`` (the WHATWG URL parser) is the reference: for every URI the sidecar accepts, the browser's host
and path equal the registered ones.
"""

from __future__ import annotations

import json

import ada_url
import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.oauth.cimd import CimdError, client_from_document
from sidecar.oauth.clients import redirect_uri_matches, redirect_uri_problem
from tests.integration.oauth.flow import Registered, authorize_url, obtain_code
from tests.support.oauth_harness import Browser, Sidecar

REGISTERED = "http://127.0.0.1:9/callback"

# Each of these is read by urlsplit as a loopback URI (or as the registered one), but not by a browser.
ATTACKS = [
    "http://evil.example\\@127.0.0.1:9/callback",
    "http://evil.example\\@127.0.0.1:1234/callback",
    "http://x@127.0.0.1:9/callback",
    "http://evil.example%5C@127.0.0.1:9/callback",
    "http://evil.example%5c@127.0.0.1:9/callback",
    "http://[::1]\\@evil.example/callback",
    "http://[::1]\\evil.example/callback",
    "http://127.0.0.1:9\\@evil.example/callback",
    "http://127.0.0.1:9/callback\\..\\..\\x",
    "http://127.0.0.1:9/call\tback",
    "http://127.0.0.1:9/call\nback",
    "http://127.0.0.1:9/call\rback",
    "http://127.0.0.1\t:9/callback",
    "HTTP://127.0.0.1:9/callback",
    "http://127.0.0.1:9/callback/../../evil",
    "http://127.0.0.1:9/%2e%2e/callback",
    "http://127.0.0.1:9/callbäck",
    "http://127.0.0.1%2f@evil.example:9/callback",
    "http://0x7f.0.0.1:9/callback",
    "http://127.1:9/callback",
    "http://127.0.0.1.:9/callback",
    " http://127.0.0.1:9/callback",
]


@pytest.mark.parametrize("uri", ATTACKS)
def test_attack_uris_never_match_the_registered_loopback_uri(uri: str) -> None:
    assert not redirect_uri_matches([REGISTERED], uri)


@pytest.mark.parametrize("uri", ATTACKS)
def test_attack_uris_cannot_be_registered(uri: str) -> None:
    assert redirect_uri_problem(uri, "web") is not None
    assert redirect_uri_problem(uri, "native") is not None


@pytest.mark.parametrize("uri", ATTACKS[:6])
def test_attack_uris_are_refused_in_client_metadata_documents(uri: str) -> None:
    doc = {"client_id": "https://app.example.com/client.json", "redirect_uris": [uri]}
    with pytest.raises(CimdError, match="redirect URI"):
        client_from_document("https://app.example.com/client.json", doc)


async def test_remembered_consent_does_not_send_the_code_to_another_host(
    sidecar: Sidecar, browser: Browser, client: Registered
) -> None:
    """The takeover end to end: the victim consented once; the attacker's link must stop at an error page."""
    await obtain_code(browser, sidecar, client.client_id)  # the victim's genuine login (consent remembered)
    for uri in ATTACKS[:8]:
        step = await browser.request(
            "GET", authorize_url(sidecar, client.client_id, redirect_uri=uri), headers={"Accept": "application/json"}
        )
        assert step.status == 400, (uri, step.status, step.headers.get("Location"))
        assert "Location" not in step.headers
        assert json.loads(step.text)["error"] == "invalid_request"


async def test_registration_refuses_a_backslash_uri(http: aiohttp.ClientSession, sidecar: Sidecar) -> None:
    body = {"redirect_uris": ["http://evil.example\\@127.0.0.1:9/callback"]}
    async with http.post(sidecar.url + "/oauth/register", json=body) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "invalid_redirect_uri"


# --- the WHATWG reference -----------------------------------------------------------------------------------

GOOD = [
    "https://app.example.com/cb",
    "https://app.example.com:8443/cb?x=1&y=a%20b",
    "https://xn--e1afmkfd.example/cb",
    "http://127.0.0.1/cb",
    "http://127.0.0.1:3000/oauth/callback",
    "http://[::1]:3000/cb",
    "http://localhost:6274/oauth/callback",
    "http://127.0.0.1:33418",
    "https://vscode.dev/redirect",
]


def _whatwg(uri: str) -> tuple[str, str, str] | None:
    try:
        url = ada_url.URL(uri)
    except ValueError:
        return None
    return url.protocol, url.hostname, url.pathname


def _plain(uri: str) -> tuple[str, str, str]:
    """The plain reading: scheme up to ':', host between '//' and the port/path, path up to '?'."""
    scheme, _, rest = uri.partition("://")
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    path = tail.split("?", 1)[0] or "/"
    return scheme + ":", host, path


@pytest.mark.parametrize("uri", GOOD)
def test_accepted_uris_read_the_same_in_a_browser(uri: str) -> None:
    assert redirect_uri_problem(uri, "web") is None
    assert _whatwg(uri) == _plain(uri)


_CHARS = st.sampled_from([*"aZ09-._~!$&'()*+,;=:@/?#%\\ \t\n[]<>\"^`{|}", "%2e", "%5C", "%2F", "ä", "\u202e"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["http://127.0.0.1", "http://[::1]", "https://app.example.com", "http://localhost", "HTTP://",
                     "http://", "https://", "http:/", "http:\\\\"]),
    st.sampled_from(["", ":9", ":80", ":0", ":09", ":65536", "@evil.example", ".", ".1", "x", "\\@evil"]),
    st.lists(_CHARS, max_size=12).map("".join),
)
def test_whatever_is_accepted_reads_the_same_in_a_browser(prefix: str, middle: str, tail: str) -> None:
    uri = prefix + middle + tail
    if redirect_uri_problem(uri, "web") is None:
        assert _whatwg(uri) == _plain(uri), uri
    if redirect_uri_matches([REGISTERED], uri):
        reg, req = _whatwg(REGISTERED), _whatwg(uri)
        assert req is not None and reg is not None and req == reg, uri
