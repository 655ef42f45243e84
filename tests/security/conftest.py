"""Attack tests reuse the gate's fixtures: an echo backend and a sidecar served like production."""

from tests.integration.gate.conftest import echo, start_backend, start_sidecar  # noqa: F401
