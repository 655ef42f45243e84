"""In-process ``TokenStore`` (DESIGN §5: the embedded default for one process).

It keeps the same records, under the same key names and with the same encryption as the Redis backend
(:mod:`sidecar.store.redis`), so the one contract suite covers both and nothing is in clear even in memory.
Atomicity comes from the event loop: no method awaits between reading and writing, so each one is a single
step, like a Lua script in Redis. Every record carries its deadline on the injected clock; expired records
are dropped when read and swept periodically, so memory stays bounded by the live state.

Not shared between processes: ``workers > 1`` requires the Redis store (the config check says so).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sidecar.crypto import KeyRing
from sidecar.store.codecs import (
    check_token_for,
    check_ttl,
    decode_grant,
    encrypt_upstream,
    grant_deadline_ms,
    make_pair,
    new_grant_fields,
    open_access_record,
    open_payload,
    open_scopes,
    open_successor,
    refresh_record_genuine,
    seal_access_record,
    seal_claims,
    seal_payload,
    seal_refresh_record,
    seal_scopes,
    to_ms,
)
from sidecar.store.layout import KeyLayout, access_member, refresh_member, successor_member
from sidecar.store.memory_keyspace import SWEEP_INTERVAL_SECONDS as SWEEP_INTERVAL_SECONDS
from sidecar.store.memory_keyspace import MemoryKeyspace
from sidecar.store.records import (
    CODE_TTL_SECONDS,
    PENDING_TTL_SECONDS,
    SUCCESSOR_SLACK_MS,
    AccessTokenInfo,
    Clock,
    Grant,
    RotationOutcome,
    RotationResult,
    TokenPair,
    UpstreamCredentials,
    new_grant_id,
    parse_client_token,
    token_hash,
)


class MemoryTokenStore(MemoryKeyspace):
    """:class:`~sidecar.store.base.TokenStore` in a dict. See the module docstring."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        key_prefix: str = "mcpsc",
        record_grace_seconds: float = 86400,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(clock)
        self._keyring = keyring
        self._keys = KeyLayout(key_prefix)
        self._grace_ms = to_ms(record_grace_seconds)

    def __repr__(self) -> str:
        return f"MemoryTokenStore(prefix={self._keys.prefix!r}, records={len(self._data)}, keyring={self._keyring!r})"

    def _live_grant(self, grant_id: str, now_ms: int) -> dict[str, str] | None:
        record = self._hash(self._keys.grant(grant_id), now_ms)
        if record is None or int(record["exp"]) <= now_ms:
            return None
        return record

    def _touch(self, grant_id: str, record: dict[str, str], now_ms: int) -> None:
        """Recompute the grant's deadline (longest live credential + grace) after a write."""
        deadline = grant_deadline_ms(int(record["up_exp"]), int(record["cl_exp"]), now_ms, self._grace_ms)
        record["exp"] = str(deadline)
        self._expire(self._keys.grant(grant_id), deadline)
        index_key = self._keys.index(grant_id)
        if index_key in self._data:
            self._expire(index_key, deadline)

    def _add_tokens(
        self,
        grant_id: str,
        record: dict[str, str],
        pair: TokenPair,
        now_ms: int,
        access_ttl_ms: int,
        refresh_ttl_ms: int,
        scopes: Sequence[str] | None = None,
    ) -> None:
        keys = self._keys
        index = self._zset(keys.index(grant_id), now_ms)
        at_member = access_member(token_hash(pair.access_token))
        at_exp = now_ms + access_ttl_ms
        at_key = keys.member_key(grant_id, at_member)
        self._put(at_key, seal_access_record(self._keyring, at_key, at_exp, grant_id, scopes), at_exp, now_ms)
        index[at_member] = at_exp
        client_exp = at_exp
        if pair.refresh_token is not None:
            rt_member = refresh_member(token_hash(pair.refresh_token))
            rt_exp = now_ms + refresh_ttl_ms
            rt_key = keys.member_key(grant_id, rt_member)
            seal = seal_refresh_record(self._keyring, rt_key, rt_exp, grant_id)
            self._put(rt_key, {"state": "active", "exp": str(rt_exp), "gid": grant_id, "seal": seal}, rt_exp, now_ms)
            index[rt_member] = rt_exp
            client_exp = max(client_exp, rt_exp)
        for member in [m for m, exp in index.items() if exp < now_ms]:
            del index[member]
        record["cl_exp"] = str(max(int(record["cl_exp"]), client_exp))
        record["updated"] = str(now_ms)

    # --- TokenStore ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._data.clear()

    async def create_grant(
        self,
        *,
        subject: str,
        client_id: str,
        scopes: Sequence[str],
        claims: Mapping[str, Any],
        upstream: UpstreamCredentials | None,
    ) -> Grant:
        now_ms = self._now_ms()
        grant_id = new_grant_id()
        key = self._keys.grant(grant_id)
        record = new_grant_fields(
            keyring=self._keyring,
            record_key=key,
            grant_id=grant_id,
            subject=subject,
            client_id=client_id,
            scopes=scopes,
            claims=claims,
            upstream=upstream,
            now_ms=now_ms,
        )
        self._put(key, record, None, now_ms)
        self._touch(grant_id, record, now_ms)
        return decode_grant(self._keyring, key, record)

    async def get_grant(self, grant_id: str) -> Grant | None:
        record = self._live_grant(grant_id, self._now_ms())
        if record is None:
            return None
        return decode_grant(self._keyring, self._keys.grant(grant_id), record)

    async def compare_and_set_upstream(
        self,
        grant_id: str,
        expected_generation: int,
        upstream: UpstreamCredentials,
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> bool:
        return self._set_upstream(grant_id, expected_generation, upstream, claims)

    async def drop_upstream(self, grant_id: str, expected_generation: int) -> bool:
        return self._set_upstream(grant_id, expected_generation, None, None)

    def _set_upstream(
        self,
        grant_id: str,
        expected_generation: int,
        upstream: UpstreamCredentials | None,
        claims: Mapping[str, Any] | None,
    ) -> bool:
        now_ms = self._now_ms()
        record = self._live_grant(grant_id, now_ms)
        # DESIGN §7.3: write only if nobody refreshed since we read (compare-and-set on generation).
        if record is None or int(record["gen"]) != expected_generation:
            return False
        envelope, up_exp = encrypt_upstream(self._keyring, self._keys.grant(grant_id), upstream)
        record.update(gen=str(expected_generation + 1), up=envelope, up_exp=str(up_exp), updated=str(now_ms))
        if claims is not None:
            record["claims"] = seal_claims(self._keyring, self._keys.grant(grant_id), claims)
        self._touch(grant_id, record, now_ms)
        return True

    async def delete_grant(self, grant_id: str) -> bool:
        now_ms = self._now_ms()
        keys = self._keys
        existed = self._live_grant(grant_id, now_ms) is not None
        index = self._get(keys.index(grant_id), now_ms) or {}
        for member in list(index):
            self._data.pop(keys.member_key(grant_id, member), None)
        for key in (keys.grant(grant_id), keys.index(grant_id), keys.lock(grant_id)):
            self._data.pop(key, None)
        return existed

    async def issue_tokens(
        self,
        grant_id: str,
        *,
        access_token: str,
        refresh_token: str | None,
        access_ttl: float,
        refresh_ttl: float,
    ) -> TokenPair | None:
        check_token_for(grant_id, access_token, "access")
        if refresh_token is not None:
            check_token_for(grant_id, refresh_token, "refresh")
        access_ttl_ms, refresh_ttl_ms = check_ttl("access_ttl", access_ttl), check_ttl("refresh_ttl", refresh_ttl)
        now_ms = self._now_ms()
        record = self._live_grant(grant_id, now_ms)
        if record is None:
            return None
        pair = make_pair(access_token, refresh_token, now_ms, access_ttl_ms, refresh_ttl_ms)
        self._add_tokens(grant_id, record, pair, now_ms, access_ttl_ms, refresh_ttl_ms)
        self._touch(grant_id, record, now_ms)
        return pair

    async def lookup_access_token(self, token: str) -> str | None:
        found = await self.find_access_token(token)
        return found.grant_id if found else None

    async def find_access_token(self, token: str) -> AccessTokenInfo | None:
        parsed = parse_client_token(token)
        if parsed is None or parsed.kind != "access":
            return None
        now_ms = self._now_ms()
        key = self._keys.member_key(parsed.grant_id, access_member(token_hash(token)))
        value = self._string(key, now_ms)
        if value is None or self._live_grant(parsed.grant_id, now_ms) is None:
            return None
        return open_access_record(self._keyring, key, value, parsed.grant_id, now_ms)

    async def rotate_refresh_token(
        self,
        grant_id: str,
        old_refresh_token: str,
        *,
        new_access_token: str,
        new_refresh_token: str,
        access_ttl: float,
        refresh_ttl: float,
        replay_grace: float,
        scopes: Sequence[str] | None = None,
    ) -> RotationResult:
        check_token_for(grant_id, new_access_token, "access")
        check_token_for(grant_id, new_refresh_token, "refresh")
        access_ttl_ms, refresh_ttl_ms = check_ttl("access_ttl", access_ttl), check_ttl("refresh_ttl", refresh_ttl)
        grace_ms = to_ms(replay_grace)
        parsed = parse_client_token(old_refresh_token)
        if parsed is None or parsed.kind != "refresh" or parsed.grant_id != grant_id:
            return RotationResult(RotationOutcome.INVALID)
        now_ms = self._now_ms()
        keys = self._keys
        record = self._live_grant(grant_id, now_ms)
        digest = token_hash(old_refresh_token)
        old_key = keys.member_key(grant_id, refresh_member(digest))
        old = self._hash(old_key, now_ms)
        if record is None or old is None or int(old["exp"]) <= now_ms:
            return RotationResult(RotationOutcome.INVALID)
        if not refresh_record_genuine(self._keyring, old_key, old.get("seal"), old.get("exp"), grant_id):
            return RotationResult(RotationOutcome.INVALID)
        successor_key = keys.member_key(grant_id, successor_member(digest))
        if old["state"] == "rotated":
            # DESIGN §8: a retry within the grace gets the same new pair again (real clients refresh twice).
            if grace_ms > 0 and now_ms - int(old["rotated_at"]) <= grace_ms:
                envelope = self._string(successor_key, now_ms)
                if envelope is not None:
                    return RotationResult(
                        RotationOutcome.REPLAYED, open_successor(self._keyring, successor_key, envelope)
                    )
            # RFC 9700 §4.14.2: "If a refresh token is compromised and subsequently used by both the attacker
            # and the legitimate client, one of them will present an invalidated refresh token, which will
            # inform the authorization server of the breach" -> revoke the whole family (the grant).
            await self.delete_grant(grant_id)
            return RotationResult(RotationOutcome.REUSE_DETECTED)
        # RFC 9700 §4.14.2: the refresh token is single use; it is invalidated as the new one is issued.
        old["state"] = "rotated"
        old["rotated_at"] = str(now_ms)
        pair = make_pair(new_access_token, new_refresh_token, now_ms, access_ttl_ms, refresh_ttl_ms)
        if grace_ms > 0:
            successor_exp = now_ms + grace_ms + SUCCESSOR_SLACK_MS
            self._put(
                successor_key, self._keyring.encrypt(pair.to_json(), record_key=successor_key), successor_exp, now_ms
            )
            self._zset(keys.index(grant_id), now_ms)[successor_member(digest)] = successor_exp
        self._add_tokens(grant_id, record, pair, now_ms, access_ttl_ms, refresh_ttl_ms, scopes)
        self._touch(grant_id, record, now_ms)
        return RotationResult(RotationOutcome.ROTATED, pair)

    async def revoke_token(self, token: str) -> bool:
        parsed = parse_client_token(token)
        if parsed is None:
            return False
        now_ms = self._now_ms()
        if parsed.kind == "access":
            member = access_member(token_hash(token))
            key = self._keys.member_key(parsed.grant_id, member)
            if self._string(key, now_ms) is None:
                return False
            del self._data[key]
            return True
        record = self._hash(self._keys.member_key(parsed.grant_id, refresh_member(token_hash(token))), now_ms)
        if record is None or record["state"] != "active" or self._live_grant(parsed.grant_id, now_ms) is None:
            return False
        # RFC 7009 §2.1: revoking a refresh token SHOULD also invalidate the access tokens of the same grant.
        return await self.delete_grant(parsed.grant_id)

    async def acquire_lock(self, grant_id: str, owner: str, ttl_ms: int) -> bool:
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be positive")
        now_ms = self._now_ms()
        key = self._keys.lock(grant_id)
        if self._get(key, now_ms) is not None:
            return False
        self._put(key, owner, now_ms + ttl_ms, now_ms)
        return True

    async def release_lock(self, grant_id: str, owner: str) -> bool:
        key = self._keys.lock(grant_id)
        held = self._string(key, self._now_ms())
        if held is None or not hmac.compare_digest(held.encode(), owner.encode()):
            return False
        del self._data[key]
        return True

    async def put_client(
        self, client_id: str, metadata: Mapping[str, Any], *, ttl: float | None = None, max_clients: int | None = None
    ) -> bool:
        now_ms = self._now_ms()
        deadline = None if ttl is None else now_ms + check_ttl("ttl", ttl)
        registry = self._zset(self._keys.clients(), now_ms)
        for member in [m for m, exp in registry.items() if exp <= now_ms]:
            del registry[member]
        if max_clients is not None and client_id not in registry and len(registry) >= max_clients:
            return False
        registry[client_id] = deadline if deadline is not None else 2**62
        key = self._keys.client(client_id)
        self._put(key, seal_payload(self._keyring, key, metadata), deadline, now_ms)
        return True

    async def get_client(self, client_id: str) -> dict[str, Any] | None:
        key = self._keys.client(client_id)
        value = self._string(key, self._now_ms())
        if value is None:
            return None
        return open_payload(self._keyring, key, value)

    async def put_code(self, code: str, payload: Mapping[str, Any], *, ttl: float = CODE_TTL_SECONDS) -> None:
        self._put_sealed(self._keys.code(code), payload, ttl)

    async def take_code(self, code: str) -> dict[str, Any] | None:
        return self._take_sealed(self._keys.code(code))

    async def put_pending(self, state: str, payload: Mapping[str, Any], *, ttl: float = PENDING_TTL_SECONDS) -> None:
        self._put_sealed(self._keys.pending(state), payload, ttl)

    async def take_pending(self, state: str) -> dict[str, Any] | None:
        return self._take_sealed(self._keys.pending(state))

    def _put_sealed(self, key: str, payload: Mapping[str, Any], ttl: float) -> None:
        now_ms = self._now_ms()
        self._put(key, seal_payload(self._keyring, key, payload), now_ms + check_ttl("ttl", ttl), now_ms)

    def _take_sealed(self, key: str) -> dict[str, Any] | None:
        envelope = self._string(key, self._now_ms())
        if envelope is None:
            return None
        del self._data[key]  # single use, decided before anything else can run
        return open_payload(self._keyring, key, envelope)

    async def put_consent(self, subject: str, client_id: str, scopes: Sequence[str], *, ttl: float) -> None:
        now_ms = self._now_ms()
        key = self._keys.consent(subject, client_id)
        self._put(key, seal_scopes(self._keyring, key, scopes), now_ms + check_ttl("ttl", ttl), now_ms)

    async def get_consent(self, subject: str, client_id: str) -> frozenset[str] | None:
        key = self._keys.consent(subject, client_id)
        value = self._string(key, self._now_ms())
        return None if value is None else open_scopes(self._keyring, key, value)
