"""For the scenarios that take the cloud away or kill the operator: an emulator of the test's own, whose state
(groups, jobs, ClientTokens) is in a file so that it comes back as it was on the same port, and an operator
against it that a successor can replace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localcluster.cluster import free_port
from tests.support.cluster import Cluster
from tests.support.emulator import EmulatorProcess, default_config, start_emulator
from tests.support.operator import OperatorProcess, start_operator


class Restartable:
    def __init__(
        self, cluster: Cluster, namespace: str, directory: Path, behaviour: dict[str, Any] | None = None
    ) -> None:
        self._cluster, self._namespace, self._directory = cluster, namespace, directory
        self._config = {**default_config(), "behaviour": behaviour or {"job_seconds": 0.3}}
        self._state = directory / "emulator-state.json"
        self._port = free_port()
        self.emulator = self.start_emulator()
        try:
            self.operator = self.start_operator()
        except BaseException:
            self.emulator.stop()
            raise

    def start_emulator(self) -> EmulatorProcess:
        """The cloud, or the cloud back after ``emulator.stop()``: the same port, what it held before."""
        self.emulator = start_emulator(self._directory, self._config, "--state-file", str(self._state), port=self._port)
        return self.emulator

    def start_operator(self) -> OperatorProcess:
        """An operator for the test's namespace; after ``operator.kill()``, its successor."""
        self.operator = start_operator(self._cluster.kubeconfig, self.emulator.url, self._namespace, self._directory)
        return self.operator

    def stop(self) -> None:
        self.operator.stop()
        self.emulator.stop()
