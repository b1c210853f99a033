"""The operator's image, built once per test run by scripts/build-image (the base is cached across runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.container.podman import ROOT, remove_leftovers


@pytest.fixture(scope="session")
def image() -> str:
    """The image's name. A machine that cannot build or run containers fails here, with the reason: the image is
    what users run, so its test is never skipped."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool, path=path) is None]
    if missing:
        pytest.fail(
            f"the container tests need {', '.join(missing)} (Debian: apt-get install -y podman runc debootstrap;"
            " .ci/run installs them)",
            pytrace=False,
        )
    start = time.monotonic()
    proc = subprocess.run([str(ROOT / "scripts" / "build-image")], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            "scripts/build-image failed, so this machine cannot build (or run) the image:\n" + proc.stderr[-4000:],
            pytrace=False,
        )
    print(f"\n{proc.stderr.strip()}\n[build-image] {time.monotonic() - start:.1f}s in all", file=sys.stderr)
    remove_leftovers()
    return proc.stdout.strip().splitlines()[-1]
