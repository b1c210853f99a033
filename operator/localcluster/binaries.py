"""Finds the binaries ``scripts/build-binaries`` built; that script is the one place versions live."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-binaries"
NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
# Needed only by clusters with real nodes, which say so when it is missing (localcluster/realnode.py).
OPTIONAL = ("kubelet",)


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    kubelet: Path | None = None

    def path_entries(self) -> list[str]:
        """Directories to put first on PATH so ``kubectl`` and ``helm`` are the pinned ones."""
        paths = (getattr(self, f) for f in self.__dataclass_fields__)
        return sorted({str(p.parent) for p in paths if p is not None})


def _search_dirs() -> list[Path]:
    override = os.environ.get("ALBM_BIN_DIRS")
    if override:
        return [Path(d) for d in override.split(os.pathsep) if d]
    out = subprocess.run([str(BUILD_SCRIPT), "dirs"], capture_output=True, text=True, check=True).stdout
    return [Path(line) for line in out.splitlines() if line]


def locate_binaries() -> Binaries:
    dirs = _search_dirs()
    found: dict[str, Path] = {}
    for name in (*NAMES, *OPTIONAL):
        for d in dirs:
            if (d / name).is_file() and os.access(d / name, os.X_OK):
                found[name.replace("-", "_")] = d / name
                break
    missing = [n for n in NAMES if n.replace("-", "_") not in found]
    if missing:
        raise ClusterError(
            f"missing binaries: {', '.join(missing)} (looked in {', '.join(map(str, dirs))}); "
            "run scripts/build-binaries (or `make binaries`) first"
        )
    return Binaries(**found)
