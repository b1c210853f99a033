"""Session-wide fixtures: one real control plane per test run (or the cluster in $ALBM_TEST_KUBECONFIG)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from localcluster import LocalCluster
from localcluster.binaries import locate_binaries
from tests.support.cluster import Cluster
from tests.support.emulator import EmulatorProcess, start_emulator
from tests.support.gate import GATE_JOB_SECONDS, Gated
from tests.support.operator import OperatorProcess, start_operator
from tests.support.restartable import Restartable


def _progress(msg: str) -> None:
    print(f"[local-cluster] {msg}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | None]:
    """The cluster this run started, or None when the tests were pointed at an existing one."""
    if os.environ.get("ALBM_TEST_KUBECONFIG"):
        yield None
        return
    cluster = LocalCluster(state_dir=tmp_path_factory.mktemp("cluster"), nodes=2)
    cluster.start(progress=_progress)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster(local_cluster: LocalCluster | None) -> Cluster:
    kubeconfig = Path(os.environ.get("ALBM_TEST_KUBECONFIG") or local_cluster.kubeconfig)  # type: ignore[union-attr]
    client_ca = local_cluster.webhook_client_ca if local_cluster is not None else None
    return Cluster(kubeconfig=kubeconfig, kubectl_bin=locate_binaries().kubectl, webhook_client_ca=client_ca)


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> Iterator[kubernetes.client.ApiClient]:
    client = cluster.api_client()
    yield client
    client.close()


@pytest.fixture
def namespace(api_client: kubernetes.client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (the namespace controller empties it)."""
    slug = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name, "labels": {"albm-test": "true"}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    proc = start_emulator(tmp_path_factory.mktemp("emulator"))
    yield proc
    proc.stop()


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorProcess:
    """The session's emulator, reset to an empty state for this test."""
    emulator_process.admin("POST", "reset")
    emulator_process.admin(
        "PUT",
        "behaviour",
        {
            "job_seconds": 0.3,
            "add_job_seconds": None,
            "max_servers_per_call": 40,
            "rate_limits": {},
            "retry_after_ms": None,
            "job_failure_rate": 0.0,
            "drain_status": "Removing",
            "max_request_line": 36 * 1024,
        },
    )
    return emulator_process


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    """The ServerGroupMembership CRD, installed once per run."""
    cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parents[1] / "crds"))
    cluster.wait_established("servergroupmemberships.albmembership.io")


@pytest.fixture
def operator(
    cluster: Cluster, crd: None, emulator: EmulatorProcess, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator as a process, watching this test's namespace, talking to the session's emulator."""
    proc = start_operator(cluster.kubeconfig, emulator.url, namespace, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def restartable(cluster: Cluster, crd: None, namespace: str, tmp_path: Path) -> Iterator[Restartable]:
    """An emulator of this test's own that can be stopped and started again as it was, and an operator against it
    that can be killed and succeeded."""
    own = Restartable(cluster, namespace, tmp_path)
    yield own
    own.stop()


@pytest.fixture
def gated(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    tmp_path: Path,
    crd: None,
) -> Iterator[Gated]:
    emulator.admin("PUT", "behaviour", {"job_seconds": GATE_JOB_SECONDS})
    """A namespace with gated members, the webhook registered and operators serving it (tests/support/gate.py)."""
    g = Gated(cluster, api_client, emulator, namespace, tmp_path)
    yield g
    g.close()
