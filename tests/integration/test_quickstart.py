"""`make run` on its own: the demo starts, its self-check passes, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

START_SECONDS = 60.0


@pytest.mark.parametrize(
    ("args", "expect"), [((), "full OAuth login -> tools/list 200"), (("--gate",), "valid token   -> 200")]
)
def test_demo_self_check_passes_and_ctrl_c_stops_it(args: tuple[str, ...], expect: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + START_SECONDS
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        text = "".join(seen)
        assert expect in text, text
        assert "self-check FAILED" not in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
