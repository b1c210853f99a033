"""podman as the container tests use it: the runtime and limits scripts/build-image uses, and a stand-in for the
Service address kubernetes.default.svc:443 that a pod's kube-proxy provides."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABEL = "albm-test=container"
# Which test run started a container: a later run removes only the leftovers of runs that are gone.
OWNER = f"albm-test-pid={os.getpid()}"


def podman_cmd() -> list[str]:
    # runc: crun refuses the hybrid cgroup layout of the project's machines.
    return ["podman", "--runtime", os.environ.get("ALBM_PODMAN_RUNTIME", "runc")]


def ulimits() -> list[str]:
    """nofile and nproc within the hard limits (podman's default nofile is above this machine's)."""
    out = []
    for name, which, cap in (("nofile", resource.RLIMIT_NOFILE, 65536), ("nproc", resource.RLIMIT_NPROC, 32768)):
        hard = resource.getrlimit(which)[1]
        n = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        out += ["--ulimit", f"{name}={n}:{n}"]
    return out


def podman(*args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([*podman_cmd(), *args], capture_output=True, text=True, check=False, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def remove_leftovers() -> None:
    """Containers of an earlier test run that was killed before its cleanup (detached containers outlive it);
    those of a test run still going on, here or in another checkout, are left alone."""
    fmt = '{{.ID}} {{index .Labels "albm-test-pid"}}'
    rows = podman("ps", "-a", "--filter", f"label={LABEL}", "--format", fmt, check=False).splitlines()
    gone = [cid for cid, _, pid in (row.partition(" ") for row in rows) if not _alive(pid)]
    if gone:
        podman("rm", "-f", "--ignore", "-t", "0", *gone, check=False)


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


class ServiceRelay:
    """What kube-proxy does for a pod: connections to the ``kubernetes`` Service (kubernetes.default.svc:443)
    reach the API server. Here a loopback address of its own, port 443, relayed to the local API server."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen)
        self.address = listen
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self.server.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
