"""Session-wide fixtures: one real control plane per test run (or the cluster in $ALBM_TEST_KUBECONFIG)."""

from __future__ import annotations

import ipaddress
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from localcluster import ClusterError, LocalCluster, realnode
from localcluster.binaries import locate_binaries
from tests.support.cluster import Cluster
from tests.support.emulator import EmulatorProcess, start_emulator
from tests.support.gate import GATE_JOB_SECONDS, Gated
from tests.support.operator import OperatorProcess, start_operator
from tests.support.realnode import TIMINGS, RealNodeInfo
from tests.support.restartable import Restartable


def _progress(msg: str) -> None:
    print(f"[local-cluster] {msg}", file=sys.stderr, flush=True)


# Why the session's cluster has no real node although a test of this run needs one (the real_node fixture fails
# those tests with it).
REAL_NODE_PROBLEMS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def local_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster | None]:
    """The cluster this run started, or None when the tests were pointed at an existing one. It has a real node
    (tainted: kwok's workloads stay off it) when a test of the run is marked real_node and the machine can run one;
    else those tests fail, with the reason, and the others go on."""
    if os.environ.get("ALBM_TEST_KUBECONFIG"):
        yield None
        return
    real = 0
    problems: list[str] = []
    if any(item.get_closest_marker("real_node") for item in request.session.items):
        problems = realnode.problems(locate_binaries().kubelet)
        real = 0 if problems else 1
    cluster = LocalCluster(state_dir=tmp_path_factory.mktemp("cluster"), nodes=2, real_nodes=real)
    try:
        cluster.start(progress=_progress)
    except ClusterError as exc:
        if not real:
            raise
        problems = [f"the real node did not start: {exc}"]
        cluster = LocalCluster(state_dir=tmp_path_factory.mktemp("cluster"), nodes=2)
        cluster.start(progress=_progress)
    request.config.stash[REAL_NODE_PROBLEMS] = problems
    if "real_nodes_start" in cluster.timings:
        TIMINGS["session cluster: real node start (images, containerd, kubelet, Ready)"] = cluster.timings[
            "real_nodes_start"
        ]
        TIMINGS["  of which the images (built once, then cached)"] = cluster.timings["real_nodes_images"]
    try:
        yield cluster
    finally:
        cluster.stop()
        if "real_nodes_stop" in cluster.timings:
            TIMINGS["session cluster: real node stop"] = cluster.timings["real_nodes_stop"]


@pytest.fixture(scope="session")
def real_node(local_cluster: LocalCluster | None, request: pytest.FixtureRequest) -> RealNodeInfo:
    """The session cluster's real node. A machine that cannot run one fails the test with the reason (what to
    install): real-node tests are never skipped."""
    if local_cluster is None:
        pytest.fail("real-node tests need the cluster this run starts (ALBM_TEST_KUBECONFIG is set)", pytrace=False)
    if not local_cluster.real:
        problems = request.config.stash.get(REAL_NODE_PROBLEMS, []) or ["the cluster has no real node"]
        pytest.fail("this machine cannot run a real node: " + "; ".join(problems), pytrace=False)
    node = local_cluster.real[0]
    return RealNodeInfo(name=node.name, subnet=ipaddress.ip_network(node.subnet))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("time the real node adds")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")


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
    """A namespace with gated members, the webhook registered and operators serving it (tests/support/gate.py)."""
    emulator.admin("PUT", "behaviour", {"job_seconds": GATE_JOB_SECONDS})
    g = Gated(cluster, api_client, emulator, namespace, tmp_path)
    yield g
    g.close()
