"""Command line: ``mcp-auth-sidecar serve|check-config|keygen|grants|clients``.

The names of commands and options are a contract with operators and their scripts: keep them stable.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from sidecar import __version__
from sidecar.config import ConfigError, Settings, describe, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-auth-sidecar",
        description="Auth sidecar for MCP servers: checks bearers, brokers OAuth, streams everything through.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", metavar="FILE", help="YAML config file (also MCP_SIDECAR_CONFIG)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="where clients connect (default 0.0.0.0:8080)")
    serve.add_argument("--upstream", metavar="URL", help="the MCP server's base URL, e.g. http://127.0.0.1:8000")
    serve.add_argument("--public-url", metavar="URL", dest="public_url", help="the external base URL clients use")
    serve.add_argument("--mode", choices=["gate", "broker"], help="gate (default) or broker")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT", dest="metrics_listen", help="Prometheus port")
    serve.add_argument("--workers", type=int, metavar="N", help="worker processes sharing the port")

    check = sub.add_parser("check-config", help="validate the configuration and print every problem")
    check.add_argument("--config", metavar="FILE", help="YAML config file (also MCP_SIDECAR_CONFIG)")
    check.add_argument("--print", action="store_true", dest="print_effective", help="print effective settings")

    from sidecar.admin import add_parsers

    add_parsers(sub, "YAML config file (also MCP_SIDECAR_CONFIG): the same as serve's")

    keygen = sub.add_parser("keygen", help="print a new AES-256 key ring entry for encryption_keys")
    keygen.add_argument("--kid", default=None, help="key id (default: k + a date-free random suffix)")
    return parser


_FLAG_KEYS = ("listen", "upstream", "public_url", "mode", "metrics_listen", "workers")


def _load(args: argparse.Namespace) -> Settings | None:
    flags: dict[str, Any] = {k: getattr(args, k, None) for k in _FLAG_KEYS}
    try:
        return load_settings(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"mcp-auth-sidecar: {len(exc.problems)} configuration problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem.render()}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        kid = args.kid or "k" + secrets.token_hex(3)
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        print(f"{kid}:{key}")
        return 0
    settings = _load(args)
    if settings is None:
        return 2
    if args.command in ("grants", "clients"):
        from sidecar.admin import main_admin

        return main_admin(settings, args)
    if args.command == "check-config":
        if args.print_effective:
            print(json.dumps(describe(settings), indent=2, sort_keys=True, default=str))
        else:
            print(
                f"configuration OK (mode {settings.mode}, upstream {settings.upstream}, "
                f"public {settings.public_url})"
            )
        return 0
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is first imported: workers then share one metrics view.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mcp-auth-sidecar-metrics-")
    from sidecar.server import run

    return run(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
