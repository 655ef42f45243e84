"""``make image`` stays true: the Dockerfile builds with buildah on a debootstrap'ed Debian and the image serves as
uid 10001 on a read-only root filesystem (scripts/image.sh does the checks; this test runs it).

Skipped, saying why, only where buildah cannot run: not Linux, not root, buildah or debootstrap missing, or buildah
refusing to start (no vfs storage). Run by ``make test-reliability`` (the first run debootstraps: minutes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# debootstrap (first run), the build and the checks; a cached base makes it well under a minute.
IMAGE_TIMEOUT_SECONDS = 1500


def why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "buildah needs Linux"
    if os.geteuid() != 0:
        return "building with buildah --isolation chroot and debootstrap needs root"
    for tool in ("buildah", "debootstrap", "unshare", "chroot", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install debootstrap buildah curl)"
    probe = subprocess.run(["buildah", "--storage-driver", "vfs", "info"], capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    if probe.returncode != 0:
        return f"buildah cannot run here: {probe.stderr.strip()[:200]}"
    return None


def test_make_image_builds_and_runs_the_image() -> None:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    result = subprocess.run([str(REPO / "scripts" / "image.sh")], cwd=REPO, capture_output=True, text=True,
                            timeout=IMAGE_TIMEOUT_SECONDS, check=False)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "configuration OK (mode gate" in out
    assert "served 200 through the sidecar, 401 without a token, as uid 10001; SIGTERM: clean exit" in out
    size = re.search(r"localhost/mcp-auth-sidecar:\S+\s+([\d.]+ [kMG]B)", out)
    assert size, out[-2000:]
    print(f"image size: {size.group(1)}")
