"""The application's typed state keys (aiohttp ``web.AppKey``), in a module every part can import.

They live apart from :mod:`sidecar.app` (which wires the parts together) so that a part that needs a shared
service, such as the OAuth handlers reading the store, never imports the application that imports it: the
import graph has no cycles (``tests/architecture``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from sidecar.config import Settings
from sidecar.health import Health
from sidecar.metadata import ResourceMetadata
from sidecar.metrics import Metrics
from sidecar.proxy import Proxy

if TYPE_CHECKING:
    # Broker-only types: importing them for real would load cryptography and PyJWT in every gate worker.
    from sidecar.broker import BrokerAuthenticator
    from sidecar.idp import IdPClient
    from sidecar.refresh import CredentialBroker
    from sidecar.store.base import TokenStore

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SESSION = web.AppKey("session", aiohttp.ClientSession)
HEALTH = web.AppKey("health", Health)
PROXY = web.AppKey("proxy", Proxy)
STORE: web.AppKey[TokenStore] = web.AppKey("store")
CREDENTIALS: web.AppKey[CredentialBroker] = web.AppKey("credentials")
BROKER_AUTH: web.AppKey[BrokerAuthenticator] = web.AppKey("broker_auth")
IDP: web.AppKey[IdPClient] = web.AppKey("idp")
METADATA = web.AppKey("metadata", ResourceMetadata)
