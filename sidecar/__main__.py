"""``python -m sidecar`` is the same as the ``mcp-auth-sidecar`` command."""

import sys

from sidecar.cli import main

sys.exit(main())
