"""``make run`` / ``python -m sidecar.demo``: the broker demo (see :mod:`sidecar.demo.broker`).

``python -m sidecar.demo --gate`` runs the earlier gate-mode demo (:mod:`sidecar.demo.gate`): a local JWKS
issuer and the sidecar checking signatures, without any login.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.demo", description=__doc__)
    parser.add_argument("--gate", action="store_true", help="run the gate-mode demo instead of the broker demo")
    args = parser.parse_args(argv)
    if args.gate:
        from sidecar.demo import gate

        return asyncio.run(gate.main())
    from sidecar.demo import broker

    return asyncio.run(broker.main())


if __name__ == "__main__":
    sys.exit(main())
