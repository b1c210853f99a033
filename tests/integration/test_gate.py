"""The deletion gate on the real API server: member pods' deletions (kubectl, the ReplicaSet controller, the
Eviction API, a force delete) are held until their servers are out of rotation in the emulator, then allowed;
non-members are not delayed; a webhook that is down or slow leaves deletions working; a standby answers by asking
the leader; with connection draining, a Draining server is out of rotation already."""

from __future__ import annotations

import base64
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from alb_membership.gate.review import GROUP_READ_SECONDS
from localcluster.cluster import free_port
from tests.support.cluster import Cluster, wait_for
from tests.support.emulator import EmulatorProcess, server
from tests.support.gate import webhook_configuration
from tests.support.operator import OperatorProcess, start_operator
from tests.support.scenario import FOREIGN, GROUP, apply, deployment, in_group, pod_ips, sgm, status_when

pytestmark = pytest.mark.integration

JOB_SECONDS = 1.0
GATE = {"enabled": True, "maxWaitSeconds": 20}


class Gated:
    """A namespace with gated members, the webhook registered, and operators serving it."""

    def __init__(self, cluster: Cluster, api_client: Any, emulator: EmulatorProcess, namespace: str, tmp: Path):
        self.cluster, self.emulator, self.namespace, self.tmp = cluster, emulator, namespace, tmp
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(api_client)
        self.name = f"albm-gate-{namespace[-6:]}"
        self.operators: list[OperatorProcess] = []

    def operator(self, port: int, *extra: str) -> OperatorProcess:
        op = start_operator(
            self.cluster.kubeconfig, self.emulator.url, self.namespace, self.tmp,
            "--webhook-port", str(port), "--webhook-hosts", "127.0.0.1",
            "--webhook-secret", "albm-webhook-tls", "--webhook-configuration", self.name,
            "--leader-election-namespace", self.namespace, *extra,
        )  # fmt: skip
        self.operators.append(op)
        return op

    def register(self, port: int, timeout: int = 30) -> None:
        self.admission.create_validating_webhook_configuration(
            webhook_configuration(self.name, self.namespace, port, timeout)
        )

    def serving(self) -> OperatorProcess:
        """The webhook registered first, as the chart installs it, then an operator serving it, which puts its CA
        into the configuration at start."""
        port = free_port()
        self.register(port)
        op = self.operator(port)
        self.trusted()
        return op

    def trusted(self) -> None:
        """The operator put its CA into the configuration."""

        def ca() -> str | None:
            config = self.admission.read_validating_webhook_configuration(self.name)
            return config.webhooks[0].client_config.ca_bundle

        bundle = wait_for(ca, "the caBundle written by the operator", timeout=30)
        assert b"BEGIN CERTIFICATE" in base64.b64decode(bundle)

    def members(self, replicas: int, **spec: Any) -> dict[str, str]:
        apply(self.cluster, self.namespace, deployment("web", replicas))
        ips = pod_ips(self.core, self.namespace, "web", replicas)
        self.emulator.add_group(GROUP, [server(ip) for ip in ips.values()] + [server(FOREIGN)], **spec)
        apply(
            self.cluster,
            self.namespace,
            sgm(
                "web",
                podSelector={"matchLabels": {"app": "web"}},
                backend={"serverType": "Ip", "port": 8080},
                deletionGate=GATE,
            ),
        )
        status_when(self.cluster, self.namespace, lambda s: s.get("memberCount") == replicas, "members recorded")
        return ips

    def out_at(self, ip: str) -> float:
        [record] = self.emulator.admin("GET", f"server-groups/{GROUP}/history?server_id={ip}")
        return float(record["out_of_rotation_at"])

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        self.admission.delete_validating_webhook_configuration(self.name)


@pytest.fixture
def gated(
    cluster: Cluster, api_client: Any, emulator: EmulatorProcess, namespace: str, tmp_path: Path, crd: None
) -> Iterator[Gated]:
    emulator.admin("PUT", "behaviour", {"job_seconds": JOB_SECONDS})
    g = Gated(cluster, api_client, emulator, namespace, tmp_path)
    yield g
    g.close()


def timed(action: Any) -> tuple[float, float]:
    started = time.time()
    action()
    return started, time.time()


def test_kubectl_delete_is_held_until_the_server_is_out(gated: Gated) -> None:
    gated.serving()
    ips = gated.members(2)
    victim = sorted(ips)[0]
    started, allowed = timed(
        lambda: gated.cluster.kubectl("delete", "pod", victim, "-n", gated.namespace, "--wait=false")
    )
    out = gated.out_at(ips[victim])
    print(f"\nkubectl delete held {allowed - started:.2f}s; out of rotation {out - started:.2f}s after the request")
    assert started < out <= allowed, "the deletion was allowed only once the server was out of rotation"
    assert ips[victim] not in in_group(gated.emulator) and FOREIGN in in_group(gated.emulator)
    other = next(ip for name, ip in ips.items() if name != victim)
    assert other in in_group(gated.emulator)


def test_a_rollout_an_eviction_and_a_force_delete_are_held(gated: Gated) -> None:
    gated.serving()
    ips = gated.members(4)
    a, b = sorted(ips)[:2]

    started, allowed = timed(lambda: gated.core.create_namespaced_pod_eviction(
        a, gated.namespace, {"metadata": {"name": a, "namespace": gated.namespace}}))  # fmt: skip
    assert started < gated.out_at(ips[a]) <= allowed, "the eviction waited for the server to be out"

    started, allowed = timed(lambda: gated.core.delete_namespaced_pod(b, gated.namespace, grace_period_seconds=0))
    assert started < gated.out_at(ips[b]) <= allowed, "a force delete passes the gate too"

    # The ReplicaSet controller's deletions: each old pod gets its deletionTimestamp after its server is out.
    seen_deleting: dict[str, float] = {}
    stop, watching = threading.Event(), threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(gated.core.list_namespaced_pod, gated.namespace, timeout_seconds=5):
            watching.set()  # the pods there are listed first: from here on, the watch sees every change
            pod = event["object"]
            if pod.metadata.deletion_timestamp and pod.status.pod_ip:
                seen_deleting.setdefault(pod.status.pod_ip, time.time())
            if stop.is_set():
                w.stop()

    def watch_until_stopped() -> None:
        while not stop.is_set():
            watch()

    watcher = threading.Thread(target=watch_until_stopped, daemon=True)
    watcher.start()
    assert watching.wait(30), "the watch of pods did not start"
    current = pod_ips(gated.core, gated.namespace, "web", 4)
    # The replacements of the evicted and deleted pods join the group, as the ingress would add them.
    gated.emulator.add_group(GROUP, [server(ip) for ip in current.values()] + [server(FOREIGN)])
    # The gate trusts its last listing of the group for GROUP_READ_SECONDS, even one read before these servers were
    # added: a replacement's server, absent from it, then looks out of rotation at once (seen: held 0.3 s, out 1 s
    # later). A gate bug, reported with issue 19; until it is fixed, the rollout waits for that listing to expire.
    time.sleep(GROUP_READ_SECONDS)
    gated.cluster.kubectl("rollout", "restart", "deployment/web", "-n", gated.namespace)
    old = set(current.values())
    wait_for(lambda: not in_group(gated.emulator) & old, "every old pod out of the group", timeout=120)
    wait_for(lambda: old <= seen_deleting.keys(), "every old pod seen terminating", timeout=60)
    stop.set()
    watcher.join(10)
    for ip in old:
        assert gated.out_at(ip) <= seen_deleting[ip], f"{ip} was terminating before its server left rotation"
    assert FOREIGN in in_group(gated.emulator)


def test_non_members_are_not_delayed_and_a_down_or_slow_webhook_lets_deletions_through(gated: Gated) -> None:
    op = gated.serving()
    gated.members(1)
    apply(gated.cluster, gated.namespace, deployment("other", 5))
    others = sorted(pod_ips(gated.core, gated.namespace, "other", 5))
    times = []
    for name in others[:3]:
        started, allowed = timed(lambda n=name: gated.core.delete_namespaced_pod(n, gated.namespace))
        times.append(allowed - started)
    print(f"\nnon-member deletions through the webhook: {sorted(times)} s")
    assert sorted(times)[1] < 1.0, "non-members are answered at once"

    op.stop()  # down: the API server gets connection refused and ignores the webhook
    started, allowed = timed(lambda: gated.core.delete_namespaced_pod(others[3], gated.namespace))
    assert allowed - started < 5, "a webhook that is down does not hold deletions"

    # Slow: something accepts connections and never answers; the webhook's timeout lets the deletion through.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        gated.admission.delete_validating_webhook_configuration(gated.name)
        gated.register(silent.getsockname()[1], timeout=3)
        # The API server reads webhook configurations through its own watch: dry-run deletions until one of them
        # reaches this webhook (a connection waits on its socket), so the timed deletion meets it for sure.
        probes: list[threading.Thread] = []

        def reached() -> bool:
            probes.append(threading.Thread(target=gated.core.delete_namespaced_pod, args=(others[4], gated.namespace),
                                           kwargs={"dry_run": "All"}, daemon=True))  # fmt: skip
            probes[-1].start()  # held for the webhook's timeout once the API server calls it, so not waited for
            return bool(select.select([silent], [], [], 0.2)[0])

        wait_for(reached, "the API server to call the new webhook", timeout=30, interval=0)
        started, allowed = timed(lambda: gated.core.delete_namespaced_pod(others[4], gated.namespace))
        for probe in probes:
            probe.join(10)
    print(f"deletion with a webhook that never answers: {allowed - started:.1f}s (timeout 3 s)")
    assert 2.5 <= allowed - started < 10


def test_a_standby_asks_the_leader(gated: Gated) -> None:
    ports = free_port(), free_port()
    ha = ("--leader-elect",)
    first = gated.operator(ports[0], *ha, "--webhook-advertise", f"https://127.0.0.1:{ports[0]}")
    wait_for(lambda: first.ready()["leader"], "the first replica to lead")
    second = gated.operator(ports[1], *ha, "--webhook-advertise", f"https://127.0.0.1:{ports[1]}")
    assert not second.ready()["leader"]
    # Registered after the operators started (the others register first): their CA goes in once it exists.
    gated.register(ports[1])  # the API server asks the standby
    gated.trusted()
    ips = gated.members(2)
    victim = sorted(ips)[0]
    started, allowed = timed(lambda: gated.core.delete_namespaced_pod(victim, gated.namespace))
    assert started < gated.out_at(ips[victim]) <= allowed, "the standby held it until the leader's removal was out"


@pytest.mark.parametrize("job_ends", ["before_draining", "after_draining"])
def test_with_connection_draining_a_draining_server_is_out_of_rotation(gated: Gated, job_ends: str) -> None:
    # Where the cloud shows Draining (the emulator's GWLB-like drain_status; its default, Removing, proves nothing).
    gated.emulator.admin("PUT", "behaviour", {"job_ends": job_ends, "drain_status": "Draining"})
    gated.serving()
    ips = gated.members(2, connection_drain={"enabled": True, "timeout_seconds": 8})
    victim = sorted(ips)[0]
    started, allowed = timed(lambda: gated.core.delete_namespaced_pod(victim, gated.namespace))
    [record] = gated.emulator.admin("GET", f"server-groups/{GROUP}/history?server_id={ips[victim]}")
    assert record["draining_at"] is not None and started < record["draining_at"] <= allowed
    assert record["gone_at"] is None or record["gone_at"] > allowed, "allowed while it drained, not after"
    if job_ends == "before_draining":  # the job's end is the start of draining: status shows it
        status_when(
            gated.cluster,
            gated.namespace,
            lambda s: f"Ip:{ips[victim]}:8080" in (s.get("draining") or {}),
            "the server shown Draining in status",
        )


def test_an_eviction_a_disruption_budget_refuses_removes_nothing(gated: Gated) -> None:
    gated.serving()
    ips = gated.members(2)
    policy = kubernetes.client.PolicyV1Api(gated.core.api_client)
    policy.create_namespaced_pod_disruption_budget(
        gated.namespace,
        {"metadata": {"name": "web"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}},
    )
    # (The local cluster runs no disruption controller: the budget allows nothing, and the Eviction API refuses.)
    victim = sorted(ips)[0]
    started = time.time()
    with pytest.raises(kubernetes.client.ApiException) as refused:
        gated.core.create_namespaced_pod_eviction(
            victim, gated.namespace, {"metadata": {"name": victim, "namespace": gated.namespace}}
        )
    assert refused.value.status == 429 and time.time() - started < JOB_SECONDS, "answered at once"
    time.sleep(1.0)
    assert ips[victim] in in_group(gated.emulator), "a refused eviction took nothing out of rotation"
    assert gated.emulator.requests("RemoveServersFromServerGroup") == []
