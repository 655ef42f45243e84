"""The admin commands' listing and revocation on a real 3-master Redis Cluster: grants live in different slots
(one hash tag each), so listing must scan every master (issue 15)."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest

from sidecar.admin import list_clients, list_grants, revoke_grants
from sidecar.crypto import KeyRing
from sidecar.store import open_store
from tests.integration.store.test_redis_contract import cluster_settings
from tests.support.redis_servers import RedisClusterProcesses

pytestmark = pytest.mark.redis


async def test_list_and_revoke_on_a_cluster(redis_cluster: RedisClusterProcesses) -> None:
    keys = "k1:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    settings = cluster_settings(redis_cluster.nodes).model_copy(update={"encryption_keys": None})
    store = open_store(settings, KeyRing.from_setting(keys))
    prefix = settings.key_prefix
    try:
        made = [await store.create_grant(subject=f"user{i % 2}", client_id="c", scopes=["openid"], claims={},
                                         upstream=None) for i in range(12)]  # fmt: skip
        await store.put_client("c", {"client_name": "C", "redirect_uris": ["http://127.0.0.1/cb"]})
        out = io.StringIO()
        assert await list_grants(store, prefix, out, sub=None, client=None) == 12
        assert {json.loads(line)["grant"] for line in out.getvalue().splitlines()} == {g.grant_id for g in made}
        out = io.StringIO()
        assert await list_clients(store, prefix, out) == 1
        assert await revoke_grants(store, prefix, io.StringIO(), sub="user0") == 6
        for g in made:
            assert (await store.get_grant(g.grant_id) is None) == (g.subject == "user0")
        assert await list_grants(store, prefix, io.StringIO(), sub="user0", client=None) == 0
    finally:
        for g in made:
            await store.delete_grant(g.grant_id)
        await store.close()
