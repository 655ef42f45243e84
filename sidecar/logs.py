"""Logging: one JSON object per line from the first line on (``log_format: text`` for humans).

Secrets never reach a log line: anything that looks like a bearer token or a JWT in a message or an extra
field is replaced with ``'***'`` by the formatter itself, so a careless ``log.info(..., token)`` still leaks
nothing.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRETISH = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"  # Authorization values
    r"|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*"  # JWT compact serialization
)
_STD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    return _SECRETISH.sub(lambda m: (m.group(1) or "") + "***", text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _STD_ATTRS or key.startswith("_"):
            continue
        out[key] = redact(value) if isinstance(value, str) else value
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {redact(record.getMessage())}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return f"{line} {tail}".rstrip()


def setup(fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would log every request; we count requests in metrics instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
