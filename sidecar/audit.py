"""The audit trail (issue 15): one JSON object per line, written off the request path.

``audit_log: off | stdout | <path>``. Events go into a bounded queue that a writer thread drains, so a slow disk
or a blocked stdout never delays a request: when the queue is full the event is dropped and
``mcp_sidecar_audit_dropped_total`` counts it. Each line is written with one ``write`` on an ``O_APPEND``
descriptor, so several worker processes can share one file without interleaving lines.

What an event never holds: tokens, authorization codes, cookies, client secrets, tool arguments (unless
``audit_arguments: hash``, then only the SHA-256 of their canonical JSON). Callers pass only the fields listed
in :data:`FIELDS`; :meth:`AuditLog.emit` drops anything else, so a secret cannot slip in by a new keyword.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.audit")

# Events waiting for the writer. At ~300 B a line this is ~3 MB; a writer that falls this far behind is
# broken (a full disk, a stopped stdout reader), and dropping with a metric beats stalling requests.
QUEUE_EVENTS: Final = 10_000
# How long shutdown waits for the writer to flush what is queued.
FLUSH_TIMEOUT_SECONDS: Final = 5.0

FIELDS: Final = frozenset(
    {
        "event", "ts", "sub", "client_id", "session_id", "protocol_version", "method", "tool", "jsonrpc_id",
        "decision", "reason", "status", "duration_ms", "request_bytes", "response_bytes", "remote",
        "arguments_sha256", "grant", "scopes", "grant_type", "outcome", "actor", "batch", "error",
    }
)
_STOP: Final = object()


def arguments_hash(arguments: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of a tool call's arguments."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Values from the client (tool names, methods, JSON-RPC ids, session ids) are cut to this many characters, and a
# batch's lists to this many elements: one request cannot write megabytes into the audit trail.
MAX_AUDIT_VALUE_CHARS: Final = 256
MAX_AUDIT_LIST_ITEMS: Final = 100


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_AUDIT_VALUE_CHARS:
        return value[:MAX_AUDIT_VALUE_CHARS] + "…"
    if isinstance(value, list | tuple):
        return [_bounded(v) for v in value[:MAX_AUDIT_LIST_ITEMS]]
    return value


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(app: web.Application, event: str, **fields: Any) -> None:
    """Emit a broker event when the audit trail is on (a no-op otherwise)."""
    audit = app.get(AUDIT)
    if audit is not None:
        audit.emit(event, fields)


class AuditLog:
    """A bounded queue and its writer thread. ``emit`` never blocks."""

    def __init__(self, target: str, metrics: Metrics, *, capacity: int = QUEUE_EVENTS) -> None:
        self._target = target
        self._metrics = metrics
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._fd: int | None = None

    def open(self) -> None:
        if self._target == "stdout":
            self._fd = sys.stdout.fileno()
        else:
            self._fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=FLUSH_TIMEOUT_SECONDS)
        self._thread.join(FLUSH_TIMEOUT_SECONDS)
        self._thread = None
        if self._fd is not None and self._target != "stdout":
            os.close(self._fd)
        self._fd = None

    def emit(self, event: str, fields: Mapping[str, Any], *, now: float | None = None) -> None:
        record: dict[str, Any] = {"event": event, "ts": _timestamp(time.time() if now is None else now)}
        for key, value in fields.items():
            if key in FIELDS and key not in record:
                record[key] = _bounded(value)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._metrics.audit_dropped.inc()

    def _run(self) -> None:
        fd = self._fd
        assert fd is not None
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                line = json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
                data = memoryview(line.encode("utf-8", "replace"))
                while data:
                    data = data[os.write(fd, data) :]
            except (OSError, TypeError, ValueError) as exc:
                self._metrics.audit_dropped.inc()
                log.warning("audit line not written", extra={"error": type(exc).__name__})


AUDIT = web.AppKey("audit", AuditLog)
