"""Client registrations, authorization codes, pending logins and remembered consent on Redis (the
:class:`~sidecar.store.protocols.ClientStore` and :class:`~sidecar.store.protocols.LoginStore` halves of
:class:`~sidecar.store.redis.RedisTokenStore`): single-key records, sealed to their key, ``GETDEL`` for
single use (RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from redis.commands.core import AsyncScript

from sidecar.crypto import KeyRing
from sidecar.store.codecs import check_ttl, open_payload, open_scopes, seal_payload, seal_scopes, to_ms
from sidecar.store.layout import KeyLayout
from sidecar.store.records import CODE_TTL_SECONDS, PENDING_TTL_SECONDS, Clock
from sidecar.store.redis_client import RedisClient
from sidecar.store.redis_client import translate as _translate


class RedisLoginRecords:
    """The single-key records of a login in flight and of registered clients; the grant-side store
    (:class:`~sidecar.store.redis.RedisTokenStore`) sets the attributes below."""

    _client: RedisClient
    _keyring: KeyRing
    _keys: KeyLayout
    _clock: Clock
    _admit_client: AsyncScript

    def _now_ms(self) -> int:
        return to_ms(self._clock())

    async def _run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await script(keys=list(keys), args=list(args))

    async def put_client(
        self, client_id: str, metadata: Mapping[str, Any], *, ttl: float | None = None, max_clients: int | None = None
    ) -> bool:
        px = None if ttl is None else check_ttl("ttl", ttl)
        now_ms = self._now_ms()
        key = self._keys.client(client_id)
        envelope = seal_payload(self._keyring, key, metadata)
        deadline = "+inf" if px is None else str(now_ms + px)
        limit = "" if max_clients is None else str(max_clients)
        async with _translate("put_client"):
            # The registry is one key (any cluster slot); the record is written after admission. Two racing
            # registrations may overshoot the cap by one each: it bounds abuse, it is not an exact quota.
            admitted = await self._run(self._admit_client, [self._keys.clients()], [str(now_ms), deadline, limit,
                                                                                     client_id])
            if int(admitted) != 1:
                return False
            await self._client.set(key, envelope, px=px)
        return True

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        key = self._keys.client(client_id)
        async with _translate("get_client"):
            value = await self._client.get(key)
        if value is None:
            return None
        return open_payload(self._keyring, key, cast(str, value))

    async def put_code(self, code: str, payload: Mapping[str, Any], *, ttl: float = CODE_TTL_SECONDS) -> None:
        await self._put_sealed("put_code", self._keys.code(code), payload, ttl)

    async def take_code(self, code: str) -> dict[str, Any] | None:
        return await self._take_sealed("take_code", self._keys.code(code))

    async def put_pending(self, state: str, payload: Mapping[str, Any], *, ttl: float = PENDING_TTL_SECONDS) -> None:
        await self._put_sealed("put_pending", self._keys.pending(state), payload, ttl)

    async def take_pending(self, state: str) -> dict[str, Any] | None:
        return await self._take_sealed("take_pending", self._keys.pending(state))

    async def _put_sealed(self, operation: str, key: str, payload: Mapping[str, Any], ttl: float) -> None:
        envelope = seal_payload(self._keyring, key, payload)
        async with _translate(operation):
            await self._client.set(key, envelope, px=check_ttl("ttl", ttl))

    async def _take_sealed(self, operation: str, key: str) -> dict[str, Any] | None:
        async with _translate(operation):
            envelope = await self._client.getdel(key)  # single use: atomic get-and-delete
        if envelope is None:
            return None
        return open_payload(self._keyring, key, cast(str, envelope))

    async def put_consent(self, subject: str, client_id: str, scopes: Sequence[str], *, ttl: float) -> None:
        key = self._keys.consent(subject, client_id)
        async with _translate("put_consent"):
            await self._client.set(key, seal_scopes(self._keyring, key, scopes), px=check_ttl("ttl", ttl))

    async def get_consent(self, subject: str, client_id: str) -> frozenset[str] | None:
        key = self._keys.consent(subject, client_id)
        async with _translate("get_consent"):
            value = await self._client.get(key)
        return None if value is None else open_scopes(self._keyring, key, cast(str, value))
