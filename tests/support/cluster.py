"""What tests see of a Kubernetes cluster: a kubeconfig, kubectl and API clients bound to it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import kubernetes

from localcluster.cluster import run_kubectl

T = TypeVar("T")


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: Path
    # The CA of the client certificate the API server presents to webhooks, when this run started the cluster (an
    # existing one, $ALBM_TEST_KUBECONFIG, may present none).
    webhook_client_ca: Path | None = None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return run_kubectl(self.kubectl_bin, self.kubeconfig, *args, check=check, input=input)

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait_established(self, crd: str, timeout: float = 30.0) -> None:
        """Until the CustomResourceDefinition ``crd`` is Established. Not ``kubectl wait``, nor a jsonpath filter on
        the conditions: both fail at once, not wait, when they read a CRD the API server has not given any condition
        yet (".status.conditions accessor error: <nil>", "<nil> is not array or slice and cannot be filtered")."""

        def established() -> bool:
            status = json.loads(self.kubectl("get", "crd", crd, "-o", "json")).get("status") or {}
            return any(c["type"] == "Established" and c["status"] == "True" for c in status.get("conditions") or [])

        wait_for(established, f"{crd} Established", timeout)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2) -> T:
    """Polls ``check`` until it returns something truthy; fails the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last seen: {last!r})")
