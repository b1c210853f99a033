"""Chaos, bounded in time: a mass termination while the operator is SIGKILLed at random moments, the emulator
restarts and resets connections, or the API server restarts. After every round: each server that had to leave
left, nothing else did, and no removal made two jobs.

``ALBM_CHAOS_ROUNDS`` (default 3) sets the rounds per kind; ``ALBM_CHAOS_SEED`` makes the moments repeatable.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest

from localcluster import LocalCluster
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess
from tests.support.operator import OperatorProcess, start_operator
from tests.support.restartable import Restartable
from tests.support.scenario import FOREIGN, apply, deployment, in_group, pod_ips, seed, sgm, status, status_when

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("ALBM_CHAOS_ROUNDS", "3"))
PODS = 24
rng = random.Random(int(os.environ.get("ALBM_CHAOS_SEED", "20261128")))


class Chaos:
    """One namespace, one Deployment, one group, one operator that the rounds may kill."""

    def __init__(
        self, cluster: Cluster, api: kubernetes.client.ApiClient, emulator: EmulatorProcess, namespace: str, tmp: Path
    ) -> None:
        self.cluster, self.emulator, self.namespace, self.tmp = cluster, emulator, namespace, tmp
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.operator: OperatorProcess | None = None

    def start_operator(self) -> None:
        self.operator = start_operator(self.cluster.kubeconfig, self.emulator.url, self.namespace, self.tmp)

    def populate(self, first: bool) -> dict[str, str]:
        """PODS Ready pods, all in the group (next to a foreign server), all recorded as members."""
        if first:
            apply(self.cluster, self.namespace, deployment("web", PODS, grace=120))
        else:
            self.apps.patch_namespaced_deployment_scale("web", self.namespace, {"spec": {"replicas": PODS}})
        ips = pod_ips(self.core, self.namespace, "web", PODS)
        seed(self.emulator, list(ips.values()))
        if first:
            apply(
                self.cluster,
                self.namespace,
                sgm("web", podSelector={"matchLabels": {"app": "web"}}, backend={"serverType": "Ip", "port": 8080}),
            )
        status_when(self.cluster, self.namespace, lambda s: s.get("memberCount") == PODS, f"{PODS} members", 90)
        return ips

    def round(self, first: bool, disturb: Callable[[], None]) -> None:
        ips = self.populate(first)
        since = time.time()
        self.apps.patch_namespaced_deployment_scale("web", self.namespace, {"spec": {"replicas": 0}})
        disturb()
        wait_for(
            lambda: not in_group(self.emulator) & set(ips.values()),
            "every terminating pod out of the group",
            timeout=120,
        )
        assert FOREIGN in in_group(self.emulator), "a server that is not a member was touched"
        # Jobs, not requests: they survive emulator restarts, and a re-sent call with the same token makes none.
        jobs: dict[str, list[str]] = {}
        for job in self.emulator.admin("GET", "jobs"):
            if job["CreateTime"] >= since * 1000 and job["ApiName"] == "RemoveServersFromServerGroup":
                for ip in job["RemovedServers"]:
                    jobs.setdefault(ip, []).append(job["Id"])
        assert set(jobs) == set(ips.values())
        assert all(len(j) == 1 for j in jobs.values()), f"a removal made two jobs: {jobs}"
        wait_for(lambda: not status(self.cluster, self.namespace).get("pending"), "nothing pending", timeout=60)
        # The terminating pods hold their IPs for 120 s; end them now so the next round starts clean.
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector="app=web").items:
            self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
        wait_for(
            lambda: not self.core.list_namespaced_pod(self.namespace, label_selector="app=web").items,
            "the old pods gone",
            timeout=60,
        )

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()


@pytest.fixture
def chaos(
    cluster: Cluster,
    api_client: kubernetes.client.ApiClient,
    emulator: EmulatorProcess,
    namespace: str,
    tmp_path: Path,
    crd: None,
) -> Iterator[Chaos]:
    emulator.admin("PUT", "behaviour", {"job_seconds": 0.3, "job_jitter_seconds": 0.3})
    c = Chaos(cluster, api_client, emulator, namespace, tmp_path)
    c.start_operator()
    yield c
    c.stop()


def test_operator_sigkilled_at_random_moments(chaos: Chaos) -> None:
    for n in range(ROUNDS):

        def kill_and_restart() -> None:
            time.sleep(rng.uniform(0.0, 1.5))  # before, during or after the first call
            assert chaos.operator is not None
            chaos.operator.kill()
            time.sleep(rng.uniform(0.0, 1.0))
            chaos.start_operator()

        chaos.round(first=n == 0, disturb=kill_and_restart)


def test_emulator_restarts_and_resets_connections(
    cluster: Cluster, api_client: kubernetes.client.ApiClient, namespace: str, tmp_path: Path, crd: None
) -> None:
    own = Restartable(cluster, namespace, tmp_path, behaviour={"job_seconds": 0.3, "job_jitter_seconds": 0.3})
    chaos = Chaos(cluster, api_client, own.emulator, namespace, tmp_path)
    chaos.operator = own.operator
    try:
        for n in range(ROUNDS):

            def restart_emulator() -> None:
                chaos.emulator.admin("PUT", "faults", {"rates": {"reset": 0.2}})
                time.sleep(rng.uniform(0.2, 1.5))
                chaos.emulator.stop()  # state (groups, jobs, tokens) is on disk
                time.sleep(rng.uniform(0.0, 1.0))
                chaos.emulator = own.start_emulator()

            chaos.round(first=n == 0, disturb=restart_emulator)
    finally:
        own.stop()


def test_api_server_restarts(chaos: Chaos, local_cluster: LocalCluster | None) -> None:
    if local_cluster is None:
        pytest.skip("restarting the API server needs the tests' own local cluster")
    for n in range(ROUNDS):

        def restart_api_server() -> None:
            time.sleep(rng.uniform(0.0, 1.0))
            local_cluster.restart("kube-apiserver")

        chaos.round(first=n == 0, disturb=restart_api_server)
