"""The operator's image, built once per test run by scripts/build-image (the base is cached across runs). The build
starts in the background as soon as the run is known to need it, so that it overlaps the local cluster's start."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

import pytest

from tests.container.podman import ROOT, remove_leftovers


@dataclass
class Build:
    process: subprocess.Popen[str]
    stdout: IO[str]
    stderr: IO[str]
    started: float


BUILD = pytest.StashKey[Build]()


def _missing_tools() -> list[str]:
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool, path=path) is None]


def pytest_collection_finish(session: pytest.Session) -> None:
    if _missing_tools() or not any("image" in getattr(item, "fixturenames", ()) for item in session.items):
        return  # not needed, or the image fixture says what is missing
    # Read once the build is over, then closed with the session; a pipe would stall a build that writes a lot.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "build-image")], stdout=out, stderr=err, text=True, start_new_session=True
    )
    session.config.stash[BUILD] = Build(process, out, err, time.monotonic())


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(BUILD, None)
    if build is None:
        return
    if build.process.poll() is None:  # the run ended before it needed the image
        os.killpg(build.process.pid, signal.SIGTERM)
        build.process.wait()
    build.stdout.close()
    build.stderr.close()


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> str:
    """The image's name. A machine that cannot build or run containers fails here, with the reason: the image is
    what users run, so its test is never skipped."""
    missing = _missing_tools()
    if missing:
        pytest.fail(
            f"the container tests need {', '.join(missing)} (Debian: apt-get install -y podman runc debootstrap;"
            " .ci/run installs them)",
            pytrace=False,
        )
    build = request.config.stash[BUILD]  # started when the run was collected
    returncode = build.process.wait()
    stdout, stderr = _read(build.stdout), _read(build.stderr)
    if returncode != 0:
        pytest.fail(
            "scripts/build-image failed, so this machine cannot build (or run) the image:\n" + stderr[-4000:],
            pytrace=False,
        )
    print(f"\n{stderr.strip()}\n[build-image] {time.monotonic() - build.started:.1f}s in all", file=sys.stderr)
    remove_leftovers()
    return stdout.strip().splitlines()[-1]
