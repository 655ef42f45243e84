"""Attack tests against the broker's front door (issue 12): the same real pieces as the OAuth integration tests
(the sidecar on loopback, the oidc-provider-mock behind the strict IdP front), with a memory store by default."""

from __future__ import annotations

import pytest

from sidecar.crypto import KeyRing
from sidecar.store.memory import MemoryTokenStore
from tests.integration.oauth.conftest import browser, cimd_server, client, http, sidecar  # noqa: F401
from tests.support.oauth_harness import FakeClock
from tests.support.oidc import idp_front, oidc_mock  # noqa: F401


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryTokenStore:
    return MemoryTokenStore(KeyRing.ephemeral(), key_prefix="sectest", clock=clock)
