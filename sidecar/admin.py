"""Admin commands (issue 15): ``grants list|revoke`` and ``clients list|delete``, for ``kubectl exec`` in the pod.

They read the same configuration as ``serve`` (file, ``MCP_SIDECAR_*``, so the store, Redis and the key ring
are the pod's own) and talk to the store directly. A revoked grant is deleted with every client token of it;
replicas stop accepting its tokens within ``token_cache_seconds`` (DESIGN §13). Its upstream refresh token is
first revoked at the IdP when the IdP publishes a ``revocation_endpoint`` (RFC 7009), and an ``admin.revoke``
event goes to the audit trail with the operating-system user who ran the command.

Output is JSON lines on stdout (one object per grant or client); tokens and secrets are never printed.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol, TextIO

from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.store.base import (
    GRANT_ID_PATTERN,
    ClientStore,
    Grant,
    GrantStore,
    KeyLayout,
    RecordCorrupt,
    StoreUnavailable,
)

SCAN_BATCH: Final = 500  # keys per SCAN round trip: small enough not to stall a busy Redis
# Client registration fields safe to print (never a secret or its hash).
CLIENT_FIELDS: Final = (
    "client_id", "client_name", "redirect_uris", "grant_types", "token_endpoint_auth_method", "client_id_issued_at",
)

RevokeUpstream = Callable[[str], Any]


class AdminError(Exception):
    """A problem the operator must fix (printed without a traceback, exit status 2)."""


def _iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")



class _GrantsAndClients(GrantStore, ClientStore, Protocol):
    """What deleting a client touches: its registration and every grant of it."""


async def _keys(store: object, pattern: str) -> AsyncIterator[str]:
    from sidecar.store.memory import MemoryTokenStore

    if isinstance(store, MemoryTokenStore):
        import fnmatch

        for key in list(store.raw_items()):
            if fnmatch.fnmatchcase(key, pattern.replace("[", "[[]")):
                yield key
        return
    client = getattr(store, "client", None)
    if client is None:
        raise AdminError("this store cannot be listed")
    try:
        async for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
            yield key.decode() if isinstance(key, bytes) else str(key)
    except Exception as exc:
        raise StoreUnavailable(f"scanning the store failed ({type(exc).__name__})") from None


async def grant_ids(store: GrantStore, prefix: str) -> AsyncIterator[str]:
    head, tail = f"{prefix}:{{", "}:grant"  # KeyLayout.grant(): <prefix>:{<grant-id>}:grant
    seen: set[str] = set()
    async for key in _keys(store, f"{prefix}:{{*}}:grant"):
        if not (key.startswith(head) and key.endswith(tail)):
            continue
        gid = key[len(head) : -len(tail)]
        if GRANT_ID_PATTERN.fullmatch(gid) and gid not in seen:
            seen.add(gid)  # a Redis SCAN may return a key twice
            yield gid


async def find_grants(
    store: GrantStore, prefix: str, *, sub: str | None = None, client: str | None = None
) -> AsyncIterator[Grant]:
    async for gid in grant_ids(store, prefix):
        try:
            grant = await store.get_grant(gid)
        except RecordCorrupt:
            continue
        if grant is None:
            continue
        if sub is not None and grant.subject != sub:
            continue
        if client is not None and grant.client_id != client:
            continue
        yield grant


def grant_line(grant: Grant) -> dict[str, Any]:
    up = grant.upstream
    return {
        "grant": grant.grant_id,
        "sub": grant.subject,
        "client": grant.client_id,
        "scopes": list(grant.scopes),
        "created": _iso(grant.created_at),
        # The last write to the grant (tokens issued, upstream refreshed); per-request use is not written to
        # the store, which would cost a write on every request.
        "last_used": _iso(grant.updated_at),
        "upstream_expiry": _iso(up.access_expires_at) if up else None,
        "upstream_refresh_expiry": _iso(up.refresh_expires_at) if up else None,
        "upstream": "present" if up else "dropped",
    }


async def list_grants(store: GrantStore, prefix: str, out: TextIO, *, sub: str | None, client: str | None) -> int:
    count = 0
    async for grant in find_grants(store, prefix, sub=sub, client=client):
        print(json.dumps(grant_line(grant), sort_keys=True), file=out)
        count += 1
    return count


async def revoke_grants(
    store: GrantStore,
    prefix: str,
    out: TextIO,
    *,
    grant: str | None = None,
    sub: str | None = None,
    client: str | None = None,
    revoke_upstream: RevokeUpstream | None = None,
    audit: Any = None,
) -> int:
    """Delete the matching grants (and all their tokens); revoke their upstream refresh tokens first."""
    if grant is not None:
        found = await store.get_grant(grant) if GRANT_ID_PATTERN.fullmatch(grant) else None
        targets = [found] if found is not None else []
    else:
        targets = [g async for g in find_grants(store, prefix, sub=sub, client=client)]
    actor = _actor()
    revoked = 0
    for g in targets:
        upstream_outcome = "none"
        if revoke_upstream is not None and g.upstream is not None and g.upstream.refresh_token:
            try:
                upstream_outcome = "revoked" if await revoke_upstream(g.upstream.refresh_token) else "unsupported"
            except Exception as exc:
                upstream_outcome = f"failed ({type(exc).__name__})"
        deleted = await store.delete_grant(g.grant_id)
        revoked += int(deleted)
        line = {"grant": g.grant_id, "sub": g.subject, "client": g.client_id, "revoked": deleted,
                "upstream_refresh_token": upstream_outcome}
        print(json.dumps(line, sort_keys=True), file=out)
        if audit is not None:
            audit.emit("admin.revoke", {"grant": g.grant_id, "sub": g.subject, "client_id": g.client_id,
                                        "actor": actor, "outcome": upstream_outcome})
    return revoked


async def list_clients(store: ClientStore, prefix: str, out: TextIO) -> int:
    count = 0
    start = len(KeyLayout(prefix).client(""))
    async for key in _keys(store, f"{prefix}:client:*"):
        client_id = key[start:]
        meta = await store.get_client(client_id)
        if meta is None:
            continue
        line = {k: meta.get(k) for k in CLIENT_FIELDS if k in meta}
        line["client_id"] = client_id
        print(json.dumps(line, sort_keys=True), file=out)
        count += 1
    return count


async def delete_client(store: _GrantsAndClients, prefix: str, client_id: str, out: TextIO, **revoke: Any) -> bool:
    """Delete a registration and revoke every grant of it (its tokens would otherwise outlive it)."""
    from sidecar.store.memory import MemoryTokenStore

    existed = await store.get_client(client_id) is not None
    key = KeyLayout(prefix).client(client_id)
    if isinstance(store, MemoryTokenStore):
        store._data.pop(key, None)  # the memory store has no delete for registrations (tests only)
    else:
        try:
            await store.client.delete(key)  # type: ignore[attr-defined]
        except Exception as exc:
            raise StoreUnavailable(f"deleting the client failed ({type(exc).__name__})") from None
    await revoke_grants(store, prefix, out, client=client_id, **revoke)
    print(json.dumps({"client_id": client_id, "deleted": existed}), file=out)
    return existed


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


async def run_admin(settings: Settings, args: Any, out: TextIO = sys.stdout) -> int:
    """Run one admin command against the configured store. Returns the exit status."""
    import aiohttp

    from sidecar.audit import AuditLog
    from sidecar.crypto import KeyRing
    from sidecar.store import open_store

    if settings.mode != "broker":
        raise AdminError("grants and clients exist only in broker mode (mode: broker)")
    if settings.store != "redis":
        raise AdminError("store: memory lives inside the serving process; admin commands need store: redis")
    if settings.encryption_keys is None:
        raise AdminError("encryption_keys is required to read grants")
    store = open_store(settings, KeyRing.from_setting(settings.encryption_keys))
    audit = AuditLog(settings.audit_log, Metrics()) if settings.audit_log != "off" else None
    prefix = settings.key_prefix
    session: aiohttp.ClientSession | None = None
    try:
        if audit is not None:
            audit.open()
        revoke_upstream: RevokeUpstream | None = None
        if args.command in ("grants", "clients") and args.action in ("revoke", "delete"):
            from sidecar.app import outbound_session
            from sidecar.idp import IdPClient

            session = outbound_session(settings)
            revoke_upstream = IdPClient.from_settings(settings, session).revoke
        if args.command == "grants" and args.action == "list":
            await list_grants(store, prefix, out, sub=args.sub, client=args.client)
        elif args.command == "grants":
            n = await revoke_grants(store, prefix, out, grant=args.grant, sub=args.sub, client=args.client,
                                    revoke_upstream=revoke_upstream, audit=audit)
            if n == 0:
                print("mcp-auth-sidecar: no grant matched", file=sys.stderr)
                return 1
        elif args.action == "list":
            await list_clients(store, prefix, out)
        elif not await delete_client(store, prefix, args.client_id, out, revoke_upstream=revoke_upstream,
                                     audit=audit):
            print("mcp-auth-sidecar: no such client", file=sys.stderr)
            return 1
        return 0
    except StoreUnavailable as exc:
        raise AdminError(f"the store is unreachable: {exc}") from None
    finally:
        if session is not None:
            await session.close()
        await store.close()
        if audit is not None:
            audit.close()


def add_parsers(sub: Any, config_help: str) -> None:
    grants = sub.add_parser("grants", help="list or revoke users' grants (broker mode)")
    gsub = grants.add_subparsers(dest="action", required=True, metavar="ACTION")
    glist = gsub.add_parser("list", help="JSON lines: grant, sub, client, scopes, created, last used, upstream expiry")
    glist.add_argument("--sub", help="only this user (the IdP's subject)")
    glist.add_argument("--client", help="only this client id")
    grevoke = gsub.add_parser("revoke", help="revoke grants now: their tokens stop working on every replica")
    which = grevoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--grant", help="one grant id")
    which.add_argument("--sub", help="every grant of this user")
    which.add_argument("--client", help="every grant of this client id")
    clients = sub.add_parser("clients", help="list or delete registered clients (broker mode)")
    csub = clients.add_subparsers(dest="action", required=True, metavar="ACTION")
    csub.add_parser("list", help="JSON lines: client id, name, redirect URIs (no secrets)")
    cdel = csub.add_parser("delete", help="delete a registration and revoke its grants")
    cdel.add_argument("client_id", metavar="CLIENT_ID")
    for p in (glist, grevoke, *csub.choices.values()):
        p.add_argument("--config", metavar="FILE", help=config_help)


def main_admin(settings: Settings, args: Any) -> int:
    try:
        return asyncio.run(run_admin(settings, args))
    except AdminError as exc:
        print(f"mcp-auth-sidecar: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_parsers", "delete_client", "list_clients", "list_grants", "main_admin", "revoke_grants"]
