"""The real nodes' images: the pod sandbox (pause) and the test workload, built with podman from the project's Debian
base (``scripts/build-image base``) and saved as one archive that each node's containerd imports.

The archive is cached beside the binaries (``$ALBM_BIN_CACHE``, default ~/.cache/alb-membership-operator), named by
a digest of what it is made of (the base image's ID and the build contexts), so a change to the workload rebuilds it
and nothing else does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from localcluster.binaries import REPO_ROOT
from localcluster.errors import ClusterError

BASE_IMAGE = "localhost/albm-python-base:bookworm"
PAUSE_IMAGE = "localhost/albm-pause:dev"
WORKLOAD_IMAGE = "localhost/albm-workload:dev"
IMAGES = (PAUSE_IMAGE, WORKLOAD_IMAGE)
PAUSE_CONTEXT = Path(__file__).with_name("pause")
WORKLOAD_CONTEXT = REPO_ROOT / "workload"
BUILD_IMAGE = REPO_ROOT / "scripts" / "build-image"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alb-membership-operator"
    return Path(os.environ.get("ALBM_BIN_CACHE") or default)


def podman_cmd() -> list[str]:
    # runc: crun refuses the hybrid cgroup layout of the project's machines (as in scripts/build-image).
    return ["podman", "--runtime", os.environ.get("ALBM_PODMAN_RUNTIME", "runc")]


def _run(argv: list[str], what: str, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise ClusterError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return proc.stdout


def _digest(base_id: str) -> str:
    h = hashlib.sha256(base_id.encode())
    for context in (PAUSE_CONTEXT, WORKLOAD_CONTEXT):
        for path in sorted(p for p in context.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def node_images(progress: Callable[[str], None] = lambda _: None) -> Path:
    """The archive of the pause and workload images (a docker-archive with both), built if missing."""
    out_dir = cache_dir() / "node-images"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if subprocess.run([*podman_cmd(), "image", "exists", BASE_IMAGE], check=False).returncode != 0:
            progress(f"making the base image {BASE_IMAGE} (scripts/build-image base; minutes, once)")
            _run([str(BUILD_IMAGE), "base"], "scripts/build-image base", timeout=1800)
        base_id = _run([*podman_cmd(), "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE], "podman inspect")
        archive = out_dir / f"images-{_digest(base_id.strip())}.tar"
        if archive.exists():
            return archive
        progress(f"building {PAUSE_IMAGE} and {WORKLOAD_IMAGE} from {BASE_IMAGE}")
        for image, context in ((PAUSE_IMAGE, PAUSE_CONTEXT), (WORKLOAD_IMAGE, WORKLOAD_CONTEXT)):
            _run(
                [
                    *podman_cmd(),
                    "build",
                    "--pull=never",
                    "--network=none",
                    "--build-arg",
                    f"BASE={BASE_IMAGE}",
                    "-f",
                    str(context / "Containerfile"),
                    "-t",
                    image,
                    str(context),
                ],
                f"podman build {image}",
            )
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        _run(
            [*podman_cmd(), "save", "--multi-image-archive", "--format=docker-archive", f"--output={tmp}", *IMAGES],
            "podman save",
        )
        tmp.rename(archive)
        for old in out_dir.glob("images-*.tar"):  # archives of older workloads
            if old != archive:
                old.unlink(missing_ok=True)
        return archive
