"""The operator as a real process (``alb-membership-operator run``) against a cluster and an emulator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.cluster import die_with_parent, free_port
from tests.support.emulator import ACCESS_KEY_ID, ACCESS_KEY_SECRET


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def ready(self) -> dict[str, Any]:
        """What /readyz says (ready, leader)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write; what a crashed node does to the operator."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(kubeconfig: Path, endpoint: str, namespace: str, log_dir: Path, *extra: str) -> OperatorProcess:
    port = free_port()
    log = log_dir / f"operator-{port}.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ACCESS_KEY_SECRET,
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "alb_membership",
                "run",
                "--endpoint",
                endpoint,
                "--namespace",
                namespace,
                "--metrics-port",
                str(port),
                "--listen-address",
                "127.0.0.1",
                "--coalesce-seconds",
                "0.2",
                "--job-poll-seconds",
                "0.2",
                *extra,
            ],
            stdout=out,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - nothing may outlive the test run, even a killed one
            stderr=subprocess.STDOUT,
            env=env,
        )
    operator = OperatorProcess(proc, port, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return operator
        except OSError:
            pass
        time.sleep(0.2)
    operator.stop()
    raise RuntimeError(f"operator not ready in 60s:\n{log.read_text()[-3000:]}")
